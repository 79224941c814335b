"""The ``resumeflow`` command line (also ``python -m resumeflow``).

Exit status: 0 on success, 1 when a run ends ``failed``, 2 on bad usage or a library error,
130 after Ctrl-C (``worker``: 0 after a Ctrl-C or SIGTERM that let it hand its runs back, 130
after a second one).

Trust: ``resume RUN_ID`` imports the ``MODULE:WORKFLOW`` that ``run`` stored with the run, so a
store decides which code runs, as a pickle does: open only stores you trust. It says on stderr
what it imports, takes ``resume RUN_ID MODULE:WORKFLOW`` (or ``--workflow``) to choose the code
yourself, and imports a stored reference with the ``sys.path`` Python set up, never adding the
current directory itself (``python -m`` puts it first; the ``resumeflow`` script does not). A
``MODULE:WORKFLOW`` you type yourself (``run``, ``resume RUN_ID MODULE:WORKFLOW``) is also looked
up in the current directory, as users of ``python -m`` expect.

``--json`` prints strict JSON (no NaN): see :func:`to_json` for how values that JSON cannot
hold are written.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any

import resumeflow as rf

from ._store_url import is_url, redact, scrub

WORKFLOW_LABEL = "resumeflow.workflow"

#: Subcommands that only read: they never create a store.
READ_ONLY_COMMANDS = frozenset({"status", "history", "results", "runs"})
#: Subcommands that need an existing store (an absent file is a typo in --db, not a new store).
NEEDS_STORE_COMMANDS = READ_ONLY_COMMANDS | {"resume"}

#: Arrays and tensors with more elements than this are summarized, not listed.
MAX_LISTED_ELEMENTS = 10_000


class UsageError(Exception):
    """Bad command-line usage (exit status 2)."""


class NoStore(UsageError):
    """A read-only subcommand named a store file that does not exist."""


def to_json(value: Any) -> Any:
    """``value`` as something ``json.dumps(..., allow_nan=False)`` writes as strict JSON.

    Rules (the CLI's ``--json`` and nothing else depend on them):

    - ``None``, ``bool``, ``str`` and ``int`` stay as they are (ints of any size: JSON numbers
      have no size limit; parsers with 64-bit or double-precision numbers may round them).
    - A finite float stays; ``nan``, ``inf`` and ``-inf`` become the strings ``"NaN"``,
      ``"Infinity"`` and ``"-Infinity"`` (the spellings ``float()`` reads back).
    - ``bytes`` become ``{"bytes_base64": "..."}``.
    - A dict whose keys are all ``str`` becomes an object; any other dict becomes
      ``{"dict_items": [[key, value], ...]}`` in its order, so ``{1: "a", "1": "b"}`` keeps both.
    - Lists and tuples become lists; arrays and tensors become nested lists, or
      ``{"type", "dtype", "shape"}`` beyond 10,000 elements.
    - A value this process cannot decode (``rf.Undecodable``) becomes ``{"undecodable": why}``.
    - Anything else becomes its ``repr``.

    >>> to_json({"x": float("nan"), "b": b"hi", "k": {1: "int", "1": "str"}})
    {'x': 'NaN', 'b': {'bytes_base64': 'aGk='}, 'k': {'dict_items': [[1, 'int'], ['1', 'str']]}}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes_base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"dict_items": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, rf.Undecodable):
        return {"undecodable": value.error}
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "tolist"):
        numel = 1
        for d in shape:
            numel *= int(d)
        if numel <= MAX_LISTED_ELEMENTS:
            return to_json(value.tolist())
        return {"type": type(value).__name__, "dtype": str(getattr(value, "dtype", "")), "shape": list(shape)}
    return repr(value)


def _state_json(state: rf.RunState) -> dict[str, Any]:
    d = state.to_dict()
    d["values"] = to_json(d["values"])
    d["nodes"] = {k: to_json(v) for k, v in d["nodes"].items()}
    return d


def _checkpoint_json(cp: rf.Checkpoint) -> dict[str, Any]:
    return cp.to_dict()


def _emit(args: argparse.Namespace, document: Any, text: str) -> None:
    if args.json:
        print(json.dumps(to_json(document), allow_nan=False, default=repr))
    else:
        print(text)


def _load_workflow(ref: str, *, search_cwd: bool = True) -> rf.Workflow:
    """Imports ``MODULE:WORKFLOW``; with ``search_cwd`` (a reference the user typed), the
    current directory is searched too, as ``python -m`` would."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:WORKFLOW, got {ref!r}")
    if search_cwd and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        hint = ""
        if not search_cwd and e.name == module_name.split(".")[0] and _in_cwd(module_name):
            hint = (
                f"; {module_name!r} is in the current directory, which is not searched for a "
                "workflow named by the store: if you trust this store, name it yourself: "
                f"resumeflow resume RUN_ID {ref}"
            )
        raise UsageError(f"cannot import module {module_name!r}: {type(e).__name__}: {e}{hint}") from None
    except Exception as e:  # a SyntaxError or any error raised while importing the module
        raise UsageError(f"cannot import module {module_name!r}: {type(e).__name__}: {e}") from None
    wf = getattr(module, attr, None)
    if not isinstance(wf, rf.Workflow):
        raise UsageError(f"{ref!r} is not a resumeflow.Workflow (found {type(wf).__name__})")
    return wf


def _in_cwd(module_name: str) -> bool:
    top = module_name.split(".")[0]
    return os.path.isfile(f"{top}.py") or os.path.isdir(top)


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


def _exit_now(run: rf.Run) -> None:
    """The second Ctrl-C: leave at once. The store is crash-safe, so the run is left as after
    a crash (its in-flight nodes run again on resume) and ``resume`` takes it over."""
    print(
        f"resumeflow: exiting now; run {run.id} stays resumable: resumeflow resume {run.id}",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(130)


def _follow(engine: rf.Engine, run: rf.Run, args: argparse.Namespace) -> int:
    """Waits for ``run`` and prints its final state. The first Ctrl-C asks the run to pause
    once its in-flight nodes finish (exit 130 then); a second one exits at once."""
    try:
        state = _watch(engine, run, args)
    except KeyboardInterrupt:
        run.interrupt()  # Run.wait did already, but not a Ctrl-C in the progress display
        print(
            f"resumeflow: interrupting run {run.id}: in-flight nodes finish, then it pauses; "
            f"press Ctrl-C again to exit now (the run stays resumable: resumeflow resume {run.id})",
            file=sys.stderr,
            flush=True,
        )
        try:
            state = run.wait()
        except KeyboardInterrupt:
            _exit_now(run)
        code = _finish(args, state)
        return 130 if state.status == "paused" else code
    return _finish(args, state)


def _finish(args: argparse.Namespace, state: rf.RunState) -> int:
    lines = [f"run {state.run_id}: {state.status}"]
    for node_id, node in state.nodes.items():
        err = f" — {node.error}" if node.error else ""
        lines.append(f"  {node_id}: {node.status} (attempt {node.attempt}){err}")
    _emit(args, _state_json(state), "\n".join(lines))
    return 1 if state.status == "failed" else 0


def cmd_run(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow run MODULE:WORKFLOW [--input k=v ...] [--run-id ID] [--until NODE]``:
    starts a run (storing ``MODULE:WORKFLOW`` with it) and follows it to the end.

    Example: ``resumeflow run train:wf --input n=10 --until load --db runs.db``.
    """
    wf = _load_workflow(args.workflow)
    inputs = _parse_inputs(args.input or [])
    labels = {WORKFLOW_LABEL: args.workflow}
    if args.until:
        if args.until not in wf:
            raise rf.GraphError(f"workflow {wf.name!r} has no node {args.until!r} (named in --until)")
        run = engine.start(wf, inputs, run_id=args.run_id, labels=labels, _until=args.until)
    else:
        run = engine.start(wf, inputs, run_id=args.run_id, labels=labels)
    return _follow(engine, run, args)


def cmd_resume(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow resume RUN_ID [MODULE:WORKFLOW] [--allow-mismatch]``: continues a run with
    the workflow stored with it (said on stderr; see the module's note on trust) or the one
    named here.

    Example: ``resumeflow resume r1 --db runs.db`` or ``resumeflow resume r1 train:wf``.
    """
    if args.workflow and args.workflow_option and args.workflow != args.workflow_option:
        raise UsageError(f"two workflows given: {args.workflow!r} and --workflow {args.workflow_option!r}")
    explicit = args.workflow or args.workflow_option
    # The raw state: only its labels are needed, no output is loaded or decoded.
    labels = engine._core.get_current_state(args.run_id)["labels"] or {}
    if explicit:
        wf = _load_workflow(explicit)
    else:
        ref = labels.get(WORKFLOW_LABEL)
        if not ref:
            raise UsageError(
                f"run {args.run_id!r} was not started by `resumeflow run`, so its workflow is unknown; "
                f"name it: resumeflow resume {args.run_id} MODULE:WORKFLOW (or use Engine.resume)"
            )
        print(
            f"resumeflow resume: importing {ref} (stored with run {args.run_id!r} in {redact(args.db)}; "
            f"to choose the code yourself: resumeflow resume {args.run_id} MODULE:WORKFLOW)",
            file=sys.stderr,
            flush=True,
        )
        wf = _load_workflow(ref, search_cwd=False)
    run = engine.resume(args.run_id, wf, allow_mismatch=args.allow_mismatch)
    return _follow(engine, run, args)


def _parse_labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--label expects k=v, got {pair!r}")
        if key == WORKFLOW_LABEL:
            raise UsageError(
                f"--label {key!r} is reserved: submit stores the MODULE:WORKFLOW reference there"
            )
        labels[key] = value
    return labels


def _prepare_submit(args: argparse.Namespace) -> None:
    """Everything ``submit`` can check before the store is opened (or created): the workflow
    imports and validates, the inputs and labels parse, no input is unknown."""
    wf = _load_workflow(args.workflow)
    inputs = _parse_inputs(args.input or [])
    labels = {**_parse_labels(args.label or []), WORKFLOW_LABEL: args.workflow}
    wf.validate()
    wf.check_inputs(inputs)
    args.prepared = (wf, inputs, labels)


def cmd_submit(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow submit MODULE:WORKFLOW [--input k=v ...] [--run-id ID] [--label k=v ...]``:
    stores a run ``queued`` (with ``MODULE:WORKFLOW``, so ``resume RUN_ID`` works later) for
    any ``resumeflow worker`` on the store, and prints its id (``--json``: its state).

    Example: ``resumeflow submit train:wf --input n=10 --label team=vision --db runs.db``.
    """
    wf, inputs, labels = args.prepared
    run = engine.submit(wf, inputs, run_id=args.run_id, labels=labels)
    if args.json:
        _emit(args, _state_json(engine.get_current_state(run.id)), run.id)
    else:
        print(run.id)
    return 0


def _prepare_worker(args: argparse.Namespace) -> None:
    """Imports and validates the served workflows and checks the limits before the store is
    opened, so that a typo costs nothing."""
    if args.max_runs is not None and args.max_runs < 1:
        raise UsageError(f"--max-runs must be at least 1, got {args.max_runs}")
    if args.idle_timeout is not None and not (math.isfinite(args.idle_timeout) and args.idle_timeout >= 0):
        raise UsageError(f"--idle-timeout must be a number of seconds >= 0, got {args.idle_timeout}")
    served: dict[str, rf.Workflow] = {}
    refs: dict[str, str] = {}
    for ref in args.workflows:
        wf = _load_workflow(ref)
        if wf.name in served and served[wf.name] is not wf:
            raise UsageError(
                f"{refs[wf.name]} and {ref} are two different workflows named {wf.name!r}; "
                "a worker serves one workflow per name"
            )
        wf.validate()
        served[wf.name] = wf
        refs[wf.name] = ref
    args.prepared = (served, refs)


def cmd_worker(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow worker MODULE:WORKFLOW [...] [--max-runs N] [--idle-timeout S]
    [--max-concurrency N]``: executes queued runs of these workflows (oldest first) and
    recovers their stale runs, until ``--max-runs`` runs finished, nothing was queued for
    ``--idle-timeout`` seconds, or Ctrl-C / SIGTERM (in-flight nodes finish, the runs go back
    to the queue, exit 0; a second one exits at once, 130). Start as many as you like on one
    store: each queued run is claimed by exactly one of them.

    Example: ``resumeflow worker train:wf --db runs.db --idle-timeout 60``.
    """
    from ._worker_cli import GracefulStop, WorkerDisplay

    served, refs = args.prepared
    if args.json:
        mode = "off"
    else:
        mode = "live" if sys.stderr.isatty() else "lines"
    display = WorkerDisplay(engine, mode)
    stop = GracefulStop(engine, display)
    if mode != "off":
        at_once = args.max_concurrency or 8  # Engine.work's default without max_concurrency
        display.note(
            f"resumeflow worker: serving {', '.join(f'{n} ({r})' for n, r in refs.items())} "
            f"from {redact(args.db)}, up to {at_once} runs at a time (pid {os.getpid()}); "
            "Ctrl-C or SIGTERM stops it"
        )
    with stop.installed(), display.watching():
        finished = engine.work(served, max_runs=args.max_runs, idle_timeout=args.idle_timeout)
    if mode != "off":
        display.note(f"resumeflow worker: stopped · {display.tally()}")
    _emit(args, {"finished": finished}, f"finished {finished} run(s)")
    return 0


def cmd_status(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow status RUN_ID``: the run's latest committed state.

    Example: ``resumeflow status r1 --db runs.db --json``.
    """
    state = engine.get_current_state(args.run_id)
    _finish(args, state)
    return 0


def cmd_history(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow history RUN_ID``: the run's checkpoints, newest first.

    Example: ``resumeflow history r1 --db runs.db``.
    """
    history = engine.history(args.run_id)
    text = "\n".join(
        f"checkpoint {cp.checkpoint_id} (parent {cp.parent_id}, {cp.kind}): {', '.join(cp.completed)}"
        for cp in history
    ) or f"run {args.run_id} has no checkpoints yet"
    _emit(args, [_checkpoint_json(cp) for cp in history], text)
    return 0


def cmd_results(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow results RUN_ID``: outputs of the completed nodes; one this process cannot
    decode is shown as ``{"undecodable": why}`` (exit 0 all the same).

    Example: ``resumeflow results r1 --db runs.db --json``.
    """
    # The state's values: an output this process cannot decode is an rf.Undecodable
    # placeholder ({"undecodable": why} in JSON), not an error that hides the others.
    values = engine.get_current_state(args.run_id).values
    text = "\n".join(f"{k}: {to_json(v)!r}"[:500] for k, v in values.items()) or "no completed nodes"
    _emit(args, {"run_id": args.run_id, "values": to_json(values)}, text)
    return 0


def cmd_runs(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow runs [--status STATUS]``: the runs in the store.

    Example: ``resumeflow runs --status paused --db runs.db``.
    """
    runs = engine.list_runs(args.status)
    text = "\n".join(
        f"{r.run_id}  {r.workflow}  {r.status}  {len(r.completed)}/{len(r.nodes)} nodes" for r in runs
    ) or "no runs"
    _emit(args, [_state_json(r) for r in runs], text)
    return 0


def cmd_cleanup(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow cleanup [RUN_ID] --keep-last N``: deletes old checkpoints.

    Example: ``resumeflow cleanup --keep-last 1 --db runs.db``.
    """
    deleted = engine.cleanup(args.run_id, keep_last=args.keep_last)
    _emit(args, {"deleted": deleted}, f"deleted {deleted} checkpoint(s)")
    return 0


def cmd_demo(engine: rf.Engine | None, args: argparse.Namespace) -> int:
    """``resumeflow demo``: kills a training run and resumes it.

    Example: ``resumeflow demo``.
    """
    from .demo import run_demo

    if args.json:
        result = run_demo(args.db if args.db_given else None, out=lambda *_: None)
        print(json.dumps(result))
    else:
        run_demo(args.db if args.db_given else None)
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, help="store: a SQLite file path or a postgresql:// URL (default resumeflow.db)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    parser = argparse.ArgumentParser(prog="resumeflow", description="durable, resumable workflows")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", parents=[common], help="run MODULE:WORKFLOW")
    p.add_argument("workflow")
    p.add_argument("--input", action="append", metavar="K=V")
    p.add_argument("--run-id")
    p.add_argument("--until")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser(
        "resume", parents=[common], help="resume a run started by `resumeflow run`",
        description="Resumes RUN_ID with the MODULE:WORKFLOW stored with it (printed on stderr; "
        "a store decides which code this imports, so open only stores you trust), or with the "
        "MODULE:WORKFLOW given here.",
    )
    p.add_argument("run_id")
    p.add_argument("workflow", nargs="?", metavar="MODULE:WORKFLOW",
                   help="the workflow to resume with (default: the one stored with the run)")
    p.add_argument("--workflow", dest="workflow_option", metavar="MODULE:WORKFLOW",
                   help="same as the positional MODULE:WORKFLOW")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="resume even if the workflow's node ids or wiring differ from the run's "
                   "(completed nodes keep their outputs)")
    p.set_defaults(func=cmd_resume)
    for name, func, help_text in (
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
    p = sub.add_parser(
        "submit", parents=[common], help="queue a run of MODULE:WORKFLOW for the workers",
        description="Stores a run with status `queued` and prints its id; any `resumeflow "
        "worker` on the store runs it.",
    )
    p.add_argument("workflow", metavar="MODULE:WORKFLOW")
    p.add_argument("--input", action="append", metavar="K=V")
    p.add_argument("--run-id")
    p.add_argument("--label", action="append", metavar="K=V", help="a label stored with the run")
    p.set_defaults(func=cmd_submit, prepare=_prepare_submit)
    p = sub.add_parser(
        "worker", parents=[common], help="execute queued runs of MODULE:WORKFLOW ...",
        description="Claims queued runs of these workflows (oldest first), executes them and "
        "recovers their stale runs. Ctrl-C or SIGTERM: in-flight nodes finish and their runs go "
        "back to the queue (exit 0); a second one exits at once.",
    )
    p.add_argument("workflows", nargs="+", metavar="MODULE:WORKFLOW")
    p.add_argument("--max-runs", type=int, metavar="N", help="stop after N runs finished")
    p.add_argument("--idle-timeout", type=float, metavar="S",
                   help="stop once nothing was queued for S seconds")
    p.add_argument("--max-concurrency", type=int, metavar="N",
                   help="nodes (and runs) executed at the same time (default: 8 runs)")
    p.set_defaults(func=cmd_worker, prepare=_prepare_worker)
    p = sub.add_parser(
        "serve", parents=[common], help="serve MODULE:WORKFLOW ... over HTTP (SSE, metrics)",
        description="The HTTP API with a durable SSE stream; only these workflows can run. "
        "Needs the server extra: pip install 'resumeflow[server]'.",
    )
    p.add_argument("workflows", nargs="+", metavar="MODULE:WORKFLOW")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", help="bearer token for /api/v1 (also RESUMEFLOW_TOKEN)")
    p.add_argument("--max-body", type=int, metavar="BYTES", help="largest request body (default 1 MiB)")
    p.add_argument("--max-concurrency", type=int, metavar="N", help="nodes executed at the same time")
    p.add_argument("--keep-checkpoints", type=int, metavar="N", help="retention: keep the newest N checkpoints of each run")
    p.add_argument("--keep-days", type=float, metavar="D", help="retention: delete checkpoints older than D days")
    p.set_defaults(func=cmd_serve, prepare=_prepare_serve)
    p = sub.add_parser(
        "mcp", parents=[common], help="serve MODULE:WORKFLOW ... as MCP tools over stdio",
        description="MCP (Model Context Protocol) over stdin/stdout, for an MCP client that spawns "
        "it (e.g. claude mcp add resumeflow -- resumeflow mcp train:wf --db runs.db). It also "
        "executes the runs it starts and recovers stale ones. Needs the MCP extra: "
        "pip install 'resumeflow[mcp]'.",
    )
    p.add_argument("workflows", nargs="+", metavar="MODULE:WORKFLOW")
    p.add_argument("--server-url", default="http://127.0.0.1:8765",
                   help="the resumeflow serve whose event streams invoke_stream names")
    p.add_argument("--token", help="bearer token of that server, sent in the stream headers "
                   "invoke_stream returns (also RESUMEFLOW_TOKEN)")
    p.add_argument("--max-concurrency", type=int, metavar="N", help="nodes executed at the same time")
    p.set_defaults(func=cmd_mcp, prepare=_prepare_mcp)
    return parser


def _load_served(args: argparse.Namespace) -> None:
    """Imports and validates the workflows a server serves; the token from ``--token`` or
    ``RESUMEFLOW_TOKEN``."""
    args.loaded = [_load_workflow(ref) for ref in args.workflows]
    for wf in args.loaded:
        wf.validate()
    args.token = args.token or os.environ.get("RESUMEFLOW_TOKEN") or None


def _prepare_serve(args: argparse.Namespace) -> None:
    """Imports the workflows and checks the exposure before the store is opened."""
    try:
        from .server.serve import check_exposure
    except ImportError as e:
        raise UsageError(f"the server needs its extra: pip install 'resumeflow[server]' ({e.name} is missing)") from None
    _load_served(args)
    check_exposure(args.host, args.token)


def cmd_serve(engine: rf.Engine, args: argparse.Namespace) -> int:
    from .server.serve import serve

    print(f"resumeflow serve: http://{args.host}:{args.port} (workflows: "
          f"{', '.join(wf.name for wf in args.loaded)}; store {redact(args.db)})", file=sys.stderr, flush=True)
    serve(engine, args.loaded, host=args.host, port=args.port, token=args.token, max_body=args.max_body,
          keep_checkpoints=args.keep_checkpoints, keep_days=args.keep_days)
    return 0


def _prepare_mcp(args: argparse.Namespace) -> None:
    """Checks the SDK is installed and imports the workflows before the store is opened."""
    try:
        import mcp.server.mcpserver  # noqa: F401

        from .server import mcp_stdio  # noqa: F401
    except ImportError as e:
        raise UsageError(f"MCP needs its extra: pip install 'resumeflow[mcp]' ({e.name} is missing)") from None
    _load_served(args)


def cmd_mcp(engine: rf.Engine, args: argparse.Namespace) -> int:
    """``resumeflow mcp MODULE:WORKFLOW [...] [--server-url URL]``: the MCP tools over stdio
    (stdout carries the protocol only; messages go to stderr).

    Example: ``claude mcp add resumeflow -- resumeflow mcp train:wf --db runs.db``.
    """
    from .server.mcp_stdio import serve_stdio

    print(f"resumeflow mcp: serving {', '.join(wf.name for wf in args.loaded)} over stdio "
          f"(store {redact(args.db)}; streams on {args.server_url})", file=sys.stderr, flush=True)
    serve_stdio(engine, args.loaded, server_url=args.server_url, token=args.token)
    return 0


def _open_store(args: argparse.Namespace) -> rf.Engine:
    """Opens ``--db`` as ``Engine(path)`` does, except that the read-only subcommands never
    create a store (an absent file is ``NoStore``) and open a store this process cannot write
    read-only."""
    path = args.db
    if args.command in NEEDS_STORE_COMMANDS and not is_url(path) and not os.path.exists(path):
        raise NoStore(f"no store at {path} (nothing was created; check --db)")
    options: dict[str, Any] = {}
    if getattr(args, "max_concurrency", None) is not None:
        options["max_concurrency"] = args.max_concurrency
    try:
        return rf.Engine(path, **options)
    except rf.StoreError:
        # A URL has no file to open read-only instead: its error is the answer.
        if args.command not in READ_ONLY_COMMANDS or is_url(path) or _writable(path):
            raise
    return rf.Engine(path, read_only=True)


def _writable(path: str) -> bool:
    """Whether this process may write the store file and create its -wal/-shm files."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.access(path, os.W_OK) and os.access(directory, os.W_OK)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    >>> import os, tempfile
    >>> main(["runs", "--db", os.path.join(tempfile.mkdtemp(), "absent.db"), "--json"])
    []
    0
    """
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
        prepare = getattr(args, "prepare", None)
        if prepare is not None:  # checks that need no store: a mistake creates nothing
            prepare(args)
        try:
            engine = _open_store(args)
        except NoStore as e:
            if args.command != "runs":
                raise
            # `runs` on an absent store: no runs, and no store created.
            print(f"resumeflow runs: {e}", file=sys.stderr)
            _emit(args, [], "no runs")
            return 0
        with engine:
            return int(args.func(engine, args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (rf.ResumeflowError, UsageError, ValueError, TypeError, OSError) as e:
        print(f"resumeflow {args.command}: {scrub(str(e), args.db)}", file=sys.stderr)
        return 2
    except Exception as e:  # a library error we did not foresee: still no traceback
        print(f"resumeflow {args.command}: {type(e).__name__}: {scrub(str(e), args.db)}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``resumeflow`` console script: ``sys.exit(main())``.

    Example: ``resumeflow runs --db runs.db``.
    """
    sys.exit(main())


if __name__ == "__main__":
    entry()
