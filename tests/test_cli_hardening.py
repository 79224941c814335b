"""Regression tests for the hardening issue: the CLI (items 7, 9, 11) and the Engine's and
Workflow's argument checking (item 10). CLI behaviour is tested through real subprocesses."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import resumeflow as rf

REPO = Path(__file__).resolve().parent.parent


def cli(
    *args: str,
    cwd: Path,
    env_extra: dict[str, str] | None = None,
    safe_path: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m resumeflow ARGS`` in ``cwd``; ``safe_path`` (``python -P``) keeps the
    current directory off ``sys.path``, as the ``resumeflow`` console script does."""
    env = dict(os.environ)
    env.update(env_extra or {})
    flags = ["-P"] if safe_path else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "resumeflow", *args], capture_output=True, text=True,
        cwd=cwd, env=env, timeout=timeout,
    )


def as_json(proc: subprocess.CompletedProcess[str]):
    assert proc.returncode in (0, 1), proc.stderr
    return strict_json(proc.stdout)


def strict_json(text: str):
    """Parses JSON refusing NaN and Infinity (which Python's json accepts by default)."""

    def refuse(constant: str):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


CHAIN = """
    import os
    import resumeflow as rf

    wf = rf.Workflow("chain2")

    @wf.node
    def a(x: int = 1):
        return x + 1

    @wf.node
    def b(a):
        return a * int(os.environ.get("RF_FACTOR", "10"))
"""


# --- item 7: `resume RUN_ID` and the code a store names ------------------------------------


def test_resume_says_what_it_imports_and_takes_an_explicit_workflow(tmp_path):
    write_module(tmp_path, "chainmod", CHAIN)
    write_module(tmp_path, "chainfix", CHAIN.replace("* int(", "* 3 * int("))
    db = str(tmp_path / "runs.db")
    for run_id in ("r1", "r2", "r3"):
        paused = as_json(cli("run", "chainmod:wf", "--db", db, "--json", "--until", "a",
                             "--run-id", run_id, cwd=tmp_path))
        assert paused["status"] == "paused"

    stored = cli("resume", "r1", "--db", db, "--json", cwd=tmp_path)
    assert as_json(stored)["values"]["b"] == 20
    assert "chainmod:wf" in stored.stderr and "r1" in stored.stderr, "says what it imports"

    positional = cli("resume", "r2", "chainfix:wf", "--db", db, "--json", cwd=tmp_path)
    assert as_json(positional)["values"]["b"] == 60, "the explicit workflow's code ran"
    assert "importing chainmod" not in positional.stderr

    option = cli("resume", "r3", "--workflow", "chainfix:wf", "--db", db, "--json", cwd=tmp_path)
    assert as_json(option)["values"]["b"] == 60


def test_a_stored_reference_is_not_imported_from_the_current_directory(tmp_path):
    """A store written by someone else names a module; the resumeflow script (no cwd on
    sys.path, like ``python -P``) must not import a file of that name from the cwd."""
    marker = tmp_path / "imported.txt"
    write_module(tmp_path, "evil", f"""
        import resumeflow as rf
        open({str(marker)!r}, "a").write("imported\\n")
        wf = rf.Workflow("evil")

        @wf.node
        def a():
            return 1

        @wf.node
        def b(a):
            return a + 1
    """)
    db = str(tmp_path / "runs.db")
    as_json(cli("run", "evil:wf", "--db", db, "--json", "--until", "a", "--run-id", "e1",
                cwd=tmp_path, safe_path=True))
    assert marker.exists(), "an explicit `run MODULE:WORKFLOW` still imports from the cwd"
    marker.unlink()

    refused = cli("resume", "e1", "--db", db, cwd=tmp_path, safe_path=True)
    assert refused.returncode == 2, refused.stderr
    assert not marker.exists(), "the stored reference was imported from the current directory"
    assert "evil:wf" in refused.stderr
    assert "resumeflow resume RUN_ID evil:wf" in refused.stderr, "says how to trust it explicitly"
    assert "Traceback" not in refused.stderr

    trusted = cli("resume", "e1", "evil:wf", "--db", db, "--json", cwd=tmp_path, safe_path=True)
    assert as_json(trusted)["status"] == "completed"
    assert marker.exists()


def test_readme_documents_the_trust_model():
    text = (REPO / "README.md").read_text()
    assert "open only stores you trust" in text.lower()
    assert "resume RUN_ID MODULE:WORKFLOW" in text


# --- item 9: Ctrl-C -------------------------------------------------------------------------


NAP = """
    import os
    import time
    import resumeflow as rf

    wf = rf.Workflow("nap")

    @wf.node
    def first():
        return 1

    @wf.node
    def nap(first):
        started = os.environ.get("RF_STARTED")
        if started:
            open(started, "w").close()
        time.sleep(float(os.environ.get("RF_NAP", "0")))
        return first + 1
"""


def _start_napping(tmp_path: Path, nap_s: float, run_id: str) -> subprocess.Popen[str]:
    write_module(tmp_path, "napmod", NAP)
    started = tmp_path / f"{run_id}.started"
    env = dict(os.environ, RF_NAP=str(nap_s), RF_STARTED=str(started))
    child = subprocess.Popen(
        [sys.executable, "-m", "resumeflow", "run", "napmod:wf", "--db", str(tmp_path / "runs.db"),
         "--run-id", run_id, "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"node never started: {child.communicate()}")
        time.sleep(0.05)
    return child


def test_second_ctrl_c_exits_at_once_and_the_run_stays_resumable(tmp_path):
    child = _start_napping(tmp_path, 30, "c2")
    try:
        child.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert child.poll() is None, "the first Ctrl-C waits for the in-flight node"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert elapsed < 5, f"took {elapsed:.1f} s after the second Ctrl-C"
    assert child.returncode != 0
    assert "Ctrl-C again" in err and "resumeflow resume c2" in err
    assert "Traceback" not in err
    done = cli("resume", "c2", "--db", str(tmp_path / "runs.db"), "--json", cwd=tmp_path)
    state = as_json(done)
    assert state["status"] == "completed" and state["values"]["nap"] == 2
    assert state["nodes"]["first"]["attempt"] == 1, "completed work was kept"


def test_first_ctrl_c_pauses_after_in_flight_nodes(tmp_path):
    child = _start_napping(tmp_path, 2, "c1")
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    state = strict_json(out)
    assert state["status"] == "paused" and state["values"] == {"first": 1, "nap": 2}


def test_engine_close_after_ctrl_c_can_be_interrupted_again(tmp_path):
    """Library use: Run.wait's first KeyboardInterrupt interrupts the run; the `with` block's
    close() then waits for the in-flight node, and a second Ctrl-C must cut that short."""
    write_module(tmp_path, "napmod", NAP)
    started = tmp_path / "lib.started"
    script = textwrap.dedent(f"""
        import resumeflow as rf
        from napmod import wf
        with rf.Engine({str(tmp_path / "lib.db")!r}) as engine:
            engine.start(wf, run_id="lib").wait()
    """)
    env = dict(os.environ, RF_NAP="30", RF_STARTED=str(started))
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        time.sleep(1.0)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=10)
        assert time.monotonic() - sent < 5
        assert child.returncode != 0
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


# --- item 10: bad arguments are typed errors naming them -------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"max_concurrency": -1}, ValueError, "max_concurrency"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_concurrency": "4"}, TypeError, "max_concurrency"),
        ({"max_concurrency": 2.5}, TypeError, "max_concurrency"),
        ({"max_store_bytes": 0}, ValueError, "max_store_bytes"),
        ({"max_store_bytes": 1}, ValueError, "max_store_bytes"),
        ({"max_store_bytes": -1}, ValueError, "max_store_bytes"),
        ({"max_store_bytes": 4096}, ValueError, "max_store_bytes"),
        ({"max_store_bytes": "big"}, TypeError, "max_store_bytes"),
        ({"resources": {"gpu": -1}}, ValueError, "gpu"),
        ({"resources": {"gpu": 2**40}}, ValueError, "gpu"),
        ({"resources": {"gpu": "one"}}, TypeError, "gpu"),
        ({"resources": ["gpu"]}, TypeError, "resources"),
        ({"blob_file_threshold": -1}, ValueError, "blob_file_threshold"),
        ({"lease_seconds": -5}, ValueError, "lease_seconds"),
        ({"lease_seconds": "30"}, TypeError, "lease_seconds"),
        ({"durability": None}, TypeError, "durability"),
        ({"durability": "fast"}, ValueError, "durability"),
    ],
)
def test_bad_engine_arguments_are_typed_errors_naming_them(tmp_path, kwargs, error, named):
    path = tmp_path / "bad.db"
    with pytest.raises(error, match=re.escape(named)) as info:
        rf.Engine(str(path), **kwargs)
    assert not isinstance(info.value, OverflowError)
    if error is ValueError:
        assert isinstance(info.value, rf.ResumeflowError), "rf.InvalidArgument"


def test_a_one_mib_store_cap_is_accepted(tmp_path):
    with rf.Engine(str(tmp_path / "cap.db"), max_store_bytes=1 << 20, resources={"gpu": 0}):
        pass


def test_node_resources_are_checked_at_decoration():
    wf = rf.Workflow("res")
    with pytest.raises(rf.GraphError, match="gpu"):
        wf.node(lambda: 1, name="n", resources={"gpu": -1})
    with pytest.raises(rf.GraphError, match="gpu"):
        wf.node(lambda: 1, name="m", resources={"gpu": "x"})


def test_a_node_named_ctx_is_a_graph_error():
    wf = rf.Workflow("ctxnode")
    with pytest.raises(rf.GraphError, match="ctx"):
        @wf.node
        def ctx():
            return 5
    with pytest.raises(rf.GraphError, match="ctx"):
        wf.node(lambda: 5, name="ctx")


@pytest.mark.parametrize("path", [":memory:", ""])
def test_in_memory_and_empty_paths_are_refused(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((rf.StoreError, ValueError)) as info:
        rf.Engine(path)
    if path:
        assert "in-memory" in str(info.value)
    assert list(tmp_path.iterdir()) == [], "no file was created"


def _two_step() -> rf.Workflow:
    wf = rf.Workflow("m")

    @wf.node
    def a(n: int = 1):
        return n

    @wf.node
    def b(a):
        return a + 100

    return wf


def test_execute_until_on_an_existing_run_refuses_different_inputs(db):
    wf = _two_step()
    with rf.Engine(db) as engine:
        engine.execute_until(wf, "a", inputs={"n": 5}, run_id="p")
        with pytest.raises(ValueError, match="'p'") as info:
            engine.execute_until(wf, "b", inputs={"n": 9}, run_id="p")
        assert isinstance(info.value, rf.ResumeflowError)
        assert "inputs" in str(info.value)
        assert engine.get_current_state("p").status == "paused", "nothing ran"
        same = engine.execute_until(wf, "b", inputs={"n": 5}, run_id="p")
        assert same.values == {"a": 5, "b": 105}
        engine.execute_until(wf, "a", inputs={"n": 2}, run_id="q")
        assert engine.execute_until(wf, "b", run_id="q").values == {"a": 2, "b": 102}
        assert engine.get_current_state("q").labels == {}, "the inputs digest stays internal"


def test_unknown_run_inputs_are_a_graph_error(db, tmp_path):
    wf = _two_step()
    with rf.Engine(db) as engine:
        with pytest.raises(rf.GraphError, match="'nn'") as info:
            engine.run(wf, {"nn": 5})
        assert "'n'" in str(info.value), "lists the known inputs"
        with pytest.raises(rf.GraphError, match="'zz'"):
            engine.execute_until(wf, "a", {"n": 1, "zz": 2}, run_id="x")
        with pytest.raises(rf.GraphError, match="'zz'"):
            engine.start(wf, {"zz": 2})
        assert engine.list_runs() == [], "no run was recorded"
        assert engine.run(wf, {"n": 3}).values["b"] == 103
    write_module(tmp_path, "chainmod", CHAIN)
    typo = cli("run", "chainmod:wf", "--db", db, "--input", "y=3", cwd=tmp_path)
    assert typo.returncode == 2 and "'y'" in typo.stderr and "'x'" in typo.stderr


def test_workflow_mismatch_says_how_to_allow_it(db, tmp_path):
    write_module(tmp_path, "mm1", CHAIN)
    write_module(tmp_path, "mm2", CHAIN.replace("def b(a)", "def c(a)"))
    as_json(cli("run", "mm1:wf", "--db", db, "--json", "--until", "a", "--run-id", "m1",
                cwd=tmp_path))
    refused = cli("resume", "m1", "mm2:wf", "--db", db, cwd=tmp_path)
    assert refused.returncode == 2
    assert "--allow-mismatch" in refused.stderr and "allow_mismatch=True" in refused.stderr
    allowed = cli("resume", "m1", "mm2:wf", "--allow-mismatch", "--db", db, "--json", cwd=tmp_path)
    assert allowed.returncode in (0, 1), allowed.stderr
    state = as_json(allowed)
    assert state["nodes"]["a"]["attempt"] == 1, "a was not run again"
    assert "allow-mismatch" in (REPO / "README.md").read_text()

    sys.path.insert(0, str(tmp_path))
    try:
        other = importlib.import_module("mm2").wf
    finally:
        sys.path.remove(str(tmp_path))
    with rf.Engine(str(tmp_path / "api.db")) as engine:
        engine.execute_until(_two_step(), "a", run_id="m2")
        with pytest.raises(rf.WorkflowMismatch, match="allow_mismatch=True"):
            engine.resume("m2", other)


# --- item 11: the CLI's stores and JSON ------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "history", "results", "resume"])
def test_read_only_commands_never_create_a_store(tmp_path, command):
    typo = tmp_path / "typo.db"
    proc = cli(command, "r1", "--db", str(typo), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"no store at {typo}" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [], "nothing was created"


def test_runs_on_an_absent_store_lists_nothing_and_creates_nothing(tmp_path):
    typo = tmp_path / "typo.db"
    proc = cli("runs", "--db", str(typo), "--json", cwd=tmp_path)
    assert proc.returncode == 0 and strict_json(proc.stdout) == []
    assert "no store at" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_read_only_store_can_be_inspected(tmp_path):
    write_module(tmp_path, "chainmod", CHAIN)
    db = tmp_path / "ro.db"
    as_json(cli("run", "chainmod:wf", "--db", str(db), "--json", "--run-id", "ro", cwd=tmp_path))
    os.chmod(db, 0o444)
    immutable = False
    if os.geteuid() == 0:  # root ignores file modes; the immutable attribute binds root too
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: cannot make a file read-only here")
        immutable = True
    try:
        proc = cli("status", "ro", "--db", str(db), "--json", cwd=tmp_path)
        assert as_json(proc)["status"] == "completed"
        results = as_json(cli("results", "ro", "--db", str(db), "--json", cwd=tmp_path))
        assert results["values"] == {"a": 2, "b": 20}
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db)], check=True)
        os.chmod(db, 0o644)


def test_json_is_strict_and_keeps_every_value(tmp_path):
    write_module(tmp_path, "jsmod", """
        import resumeflow as rf
        wf = rf.Workflow("js")

        @wf.node
        def vals():
            return {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"),
                    "keys": {1: "int", "1": "str"}, "b": b"\\x00\\x01", "big": 2**70,
                    "neg": -(2**65), "nested": [float("nan"), (1.5, {2: b"x"})]}
    """)
    db = str(tmp_path / "js.db")
    for args in (("run", "jsmod:wf", "--run-id", "j1"), ("status", "j1"), ("results", "j1")):
        proc = cli(*args, "--db", db, "--json", cwd=tmp_path)
        values = as_json(proc)["values"]["vals"]
        assert values["nan"] == "NaN" and values["inf"] == "Infinity" and values["ninf"] == "-Infinity"
        assert values["keys"] == {"dict_items": [[1, "int"], ["1", "str"]]}
        assert values["b"] == {"bytes_base64": "AAE="}
        assert values["big"] == 2**70 and values["neg"] == -(2**65)
        assert values["nested"] == ["NaN", [1.5, {"dict_items": [[2, {"bytes_base64": "eA=="}]]}]]


def test_results_shows_undecodable_values_as_placeholders(tmp_path):
    write_module(tmp_path, "fracmod", """
        import fractions
        import os
        import resumeflow as rf

        if os.environ.get("RF_REGISTER"):
            rf.register_codec(fractions.Fraction, "test.cli_frac", lambda f: str(f).encode(),
                              lambda b: fractions.Fraction(b.decode()))
        wf = rf.Workflow("frac")

        @wf.node
        def third():
            return fractions.Fraction(1, 3)

        @wf.node
        def plain():
            return 7
    """)
    db = str(tmp_path / "f.db")
    as_json(cli("run", "fracmod:wf", "--db", db, "--json", "--run-id", "f1", cwd=tmp_path,
                env_extra={"RF_REGISTER": "1"}))
    proc = cli("results", "f1", "--db", db, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    values = strict_json(proc.stdout)["values"]
    assert values["plain"] == 7
    assert set(values["third"]) == {"undecodable"} and "test.cli_frac" in values["third"]["undecodable"]
    text = cli("results", "f1", "--db", db, cwd=tmp_path)
    assert text.returncode == 0 and "undecodable" in text.stdout and "plain: 7" in text.stdout


def test_readme_example_runs_twice(tmp_path):
    readme = (REPO / "README.md").read_text()
    example = readme.split("## Example", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["resumeflow.cli", "resumeflow._engine", "resumeflow._workflow"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
