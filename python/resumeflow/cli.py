"""The ``resumeflow`` command line (also ``python -m resumeflow``).

Exit status: 0 on success, 1 when a run ends ``failed``, 2 on bad usage or a library error.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import sys
import time
from typing import Any

import resumeflow as rf

WORKFLOW_LABEL = "resumeflow.workflow"


class UsageError(Exception):
    """Bad command-line usage (exit status 2)."""


def _jsonable(value: Any) -> Any:
    """Values as JSON: tensors and arrays become lists (or a summary when large)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return {"bytes_base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "tolist"):
        numel = 1
        for d in shape:
            numel *= int(d)
        if numel <= 10_000:
            return value.tolist()
        return {"type": type(value).__name__, "dtype": str(getattr(value, "dtype", "")), "shape": list(shape)}
    return repr(value)


def _state_json(state: rf.RunState) -> dict[str, Any]:
    d = state.to_dict()
    d["values"] = _jsonable(d["values"])
    d["nodes"] = {k: _jsonable(v) for k, v in d["nodes"].items()}
    return d


def _checkpoint_json(cp: rf.Checkpoint) -> dict[str, Any]:
    return {
        "checkpoint_id": cp.checkpoint_id,
        "parent_id": cp.parent_id,
        "run_id": cp.run_id,
        "created_at": cp.created_at,
        "completed": cp.completed,
        "kind": cp.kind,
    }


def _emit(args: argparse.Namespace, document: Any, text: str) -> None:
    if args.json:
        print(json.dumps(document, default=repr))
    else:
        print(text)


def _load_workflow(ref: str) -> rf.Workflow:
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:WORKFLOW, got {ref!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # a SyntaxError or any error raised while importing the module
        raise UsageError(f"cannot import module {module_name!r}: {type(e).__name__}: {e}") from None
    wf = getattr(module, attr, None)
    if not isinstance(wf, rf.Workflow):
        raise UsageError(f"{ref!r} is not a resumeflow.Workflow (found {type(wf).__name__})")
    return wf


def _parse_inputs(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--input expects k=v, got {pair!r}")
        try:
            inputs[key] = json.loads(raw)
        except json.JSONDecodeError:
            inputs[key] = raw
    return inputs


def _watch(engine: rf.Engine, run: rf.Run, args: argparse.Namespace) -> rf.RunState:
    """Waits for a run, with a live progress display unless --json or not a terminal."""
    if args.json or not sys.stderr.isatty():
        return run.wait()
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    def table() -> Table:
        # The raw state: no output values are loaded or decoded while polling.
        state = engine._core.get_current_state(run.id)
        t = Table(title=f"run {run.id} — {state['status']}")
        for col in ("node", "status", "attempt", "error"):
            t.add_column(col)
        for node_id, node in state["nodes"].items():
            t.add_row(node_id, node["status"], str(node["attempt"]), (node["error"] or "")[:60])
        return t

    with Live(table(), console=Console(stderr=True), refresh_per_second=8) as live:
        while not run.done():
            time.sleep(0.1)
            live.update(table())
        live.update(table())
    return run.wait()


def _finish(args: argparse.Namespace, state: rf.RunState) -> int:
    lines = [f"run {state.run_id}: {state.status}"]
    for node_id, node in state.nodes.items():
        err = f" — {node.error}" if node.error else ""
        lines.append(f"  {node_id}: {node.status} (attempt {node.attempt}){err}")
    _emit(args, _state_json(state), "\n".join(lines))
    return 1 if state.status == "failed" else 0


def cmd_run(engine: rf.Engine, args: argparse.Namespace) -> int:
    wf = _load_workflow(args.workflow)
    inputs = _parse_inputs(args.input or [])
    labels = {WORKFLOW_LABEL: args.workflow}
    if args.until:
        if args.until not in wf:
            raise rf.GraphError(f"workflow {wf.name!r} has no node {args.until!r} (named in --until)")
        run = engine.start(wf, inputs, run_id=args.run_id, labels=labels, _until=args.until)
    else:
        run = engine.start(wf, inputs, run_id=args.run_id, labels=labels)
    return _finish(args, _watch(engine, run, args))


def cmd_resume(engine: rf.Engine, args: argparse.Namespace) -> int:
    state = engine.get_current_state(args.run_id)
    ref = state.labels.get(WORKFLOW_LABEL)
    if not ref:
        raise UsageError(
            f"run {args.run_id!r} was not started by `resumeflow run`, so its workflow is unknown; "
            "resume it from Python with Engine.resume"
        )
    run = engine.resume(args.run_id, _load_workflow(ref))
    return _finish(args, _watch(engine, run, args))


def cmd_status(engine: rf.Engine, args: argparse.Namespace) -> int:
    state = engine.get_current_state(args.run_id)
    _finish(args, state)
    return 0


def cmd_history(engine: rf.Engine, args: argparse.Namespace) -> int:
    history = engine.history(args.run_id)
    text = "\n".join(
        f"checkpoint {cp.checkpoint_id} (parent {cp.parent_id}, {cp.kind}): {', '.join(cp.completed)}"
        for cp in history
    ) or f"run {args.run_id} has no checkpoints yet"
    _emit(args, [_checkpoint_json(cp) for cp in history], text)
    return 0


def cmd_results(engine: rf.Engine, args: argparse.Namespace) -> int:
    values = engine.get_partial_results(args.run_id)
    text = "\n".join(f"{k}: {_jsonable(v)!r}"[:500] for k, v in values.items()) or "no completed nodes"
    _emit(args, {"run_id": args.run_id, "values": _jsonable(values)}, text)
    return 0


def cmd_runs(engine: rf.Engine, args: argparse.Namespace) -> int:
    runs = engine.list_runs(args.status)
    text = "\n".join(
        f"{r.run_id}  {r.workflow}  {r.status}  {len(r.completed)}/{len(r.nodes)} nodes" for r in runs
    ) or "no runs"
    _emit(args, [_state_json(r) for r in runs], text)
    return 0


def cmd_cleanup(engine: rf.Engine, args: argparse.Namespace) -> int:
    deleted = engine.cleanup(args.run_id, keep_last=args.keep_last)
    _emit(args, {"deleted": deleted}, f"deleted {deleted} checkpoint(s)")
    return 0


def cmd_demo(engine: rf.Engine | None, args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.json:
        result = run_demo(args.db if args.db_given else None, out=lambda *_: None)
        print(json.dumps(result))
    else:
        run_demo(args.db if args.db_given else None)
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, help="store path (default resumeflow.db)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    parser = argparse.ArgumentParser(prog="resumeflow", description="durable, resumable workflows")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", parents=[common], help="run MODULE:WORKFLOW")
    p.add_argument("workflow")
    p.add_argument("--input", action="append", metavar="K=V")
    p.add_argument("--run-id")
    p.add_argument("--until")
    p.set_defaults(func=cmd_run)
    for name, func, help_text in (
        ("resume", cmd_resume, "resume a run started by `resumeflow run`"),
        ("status", cmd_status, "a run's state"),
        ("history", cmd_history, "a run's checkpoints, newest first"),
        ("results", cmd_results, "outputs of a run's completed nodes"),
    ):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("run_id")
        p.set_defaults(func=func)
    p = sub.add_parser("runs", parents=[common], help="runs in the store")
    p.add_argument("--status")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("cleanup", parents=[common], help="delete old checkpoints")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--keep-last", type=int, required=True)
    p.set_defaults(func=cmd_cleanup)
    p = sub.add_parser("demo", parents=[common], help="kill a training run and resume it")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and 2
    args.db_given = args.db is not None
    args.db = args.db or "resumeflow.db"
    try:
        if args.command == "demo":
            return cmd_demo(None, args)
        with rf.Engine(args.db) as engine:
            return int(args.func(engine, args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (rf.ResumeflowError, UsageError, ValueError, TypeError, OSError) as e:
        print(f"resumeflow {args.command}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a library error we did not foresee: still no traceback
        print(f"resumeflow {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
