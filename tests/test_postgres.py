"""The PostgreSQL store: what only a server store has (connection errors that never show the
password, a schema written by a newer version, workers on several hosts, a kill -9 whose lease
another host must wait out, a server restart mid-run). The contract both stores share runs
from the parametrized modules (``pytest.mark.both_stores``: test_api_contract, test_resumption,
test_queue, test_crash_recovery, test_cli_queue).

Each test has a schema of its own on the session's throwaway cluster (tests/pg_cluster.py);
without PostgreSQL server binaries they skip (under CI they fail)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from urllib.parse import urlsplit, urlunsplit

import pytest
import resumeflow as rf
from conftest import TESTS, python, spawn, wait_for
from pg_cluster import DATABASE, PASSWORD, USER, PgCluster, free_port, schema_of, wait_until_stopped
from resumeflow._store_url import is_url, redact, scrub
from rf_pool_workflows import executions, expected, five
from rf_workflows import chain, ledger_entries


def texts_of(err: BaseException) -> list[str]:
    """Everything an error shows: str, repr, args, the formatted traceback, and the same for
    every error chained to it (shown or not)."""
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out += [str(err), repr(err), *map(repr, err.args), "".join(traceback.format_exception(err))]
        err = err.__cause__ or err.__context__
    return out


def assert_hidden(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, f"the password {secret!r} leaked: {text!r}"


def while_alive(child: subprocess.Popen[str], predicate, timeout: float = 60) -> None:
    """Waits for ``predicate``; fails at once, with the child's output, if the child exits."""

    def check() -> bool:
        if child.poll() is not None:
            out, err = child.communicate()
            raise AssertionError(f"the child exited {child.returncode} first\nstdout: {out}\nstderr: {err}")
        return predicate()

    wait_for(check, timeout=timeout)


def with_netloc(url: str, netloc: str, path: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc, path=parts.path if path is None else path))


# -- the test cluster itself ------------------------------------------------------------------


def test_the_test_cluster_authenticates_with_scram_and_keeps_fsync(pg_server):
    assert pg_server.sql("SHOW fsync") == "on"
    assert pg_server.sql("SHOW synchronous_commit") == "on"
    assert pg_server.sql("SHOW listen_addresses") == "127.0.0.1"
    assert pg_server.sql("SELECT count(*) FROM pg_hba_file_rules WHERE auth_method <> 'scram-sha-256'") == "0"
    ok = pg_server.psql_cmd("SELECT current_user || '@' || current_database()", user=USER, password=PASSWORD)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{USER}@{DATABASE}", ok.stderr
    refused = pg_server.psql_cmd("SELECT 1", user=USER, password="not-the-password")
    assert refused.returncode != 0 and "password authentication failed" in refused.stderr


def test_a_cluster_starts_restarts_and_stops_leaving_nothing(pg_server):
    cluster = PgCluster(pg_server.bindir)
    try:
        cluster.start()
        assert cluster.accepts_connections()
        cluster.restart()
        assert cluster.sql("SELECT 41 + 1") == "42", "back after the restart"
    finally:
        cluster.stop()
    assert wait_until_stopped(cluster), "the server still listens"
    assert not cluster.root.exists(), "the cluster's directory was removed"


def test_the_cluster_cli_leaves_a_server_running_and_stops_it(pg_server):
    """``python3 tests/pg_cluster.py start`` (standard library only: ``-I -S``) prints URL= and
    DIR= and exits, the server still running; ``stop DIR`` stops it and removes DIR; stopping
    again does nothing, and a directory that is no cluster's is refused and kept."""
    from pathlib import Path

    cli = [sys.executable, "-I", "-S", str(TESTS / "pg_cluster.py")]
    started = subprocess.run([*cli, "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    printed = dict(line.split("=", 1) for line in started.stdout.splitlines())
    assert sorted(printed) == ["DIR", "URL"], started.stdout
    root = Path(printed["DIR"])
    try:
        with rf.Engine(f"{printed['URL']}?schema=cli") as engine:
            assert engine.run(chain, {"x": 1}, run_id="cli").status == "completed"
    finally:
        stopped = subprocess.run([*cli, "stop", str(root)], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not root.exists()
    with pytest.raises(rf.StoreError):  # nothing listens there any more
        rf.Engine(f"{printed['URL']}?schema=cli")
    again = subprocess.run([*cli, "stop", str(root)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to stop" in again.stderr, again.stderr
    refused = subprocess.run([*cli, "stop", str(TESTS)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not a test cluster" in refused.stderr, refused.stderr
    assert (TESTS / "pg_cluster.py").exists()


# -- the URL: parsing, redaction (no server needed) ---------------------------------------------


def test_urls_are_told_from_paths_and_shown_without_their_password():
    url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:5432/{DATABASE}?schema=t_x"
    assert is_url(url) and not is_url("/tmp/runs.db") and not is_url("runs.db")
    assert redact(url) == f"postgresql://{USER}:***@127.0.0.1:5432/{DATABASE}?schema=t_x"
    assert redact("/tmp/a:b@c.db") == "/tmp/a:b@c.db", "a file path is never rewritten"
    for tricky in ("postgresql://rf:p@ss:w/rd@h:1/d", "postgresql://rf:pw%40x@h/d", "postgresql://h/d?password=pw-q&x=1"):
        shown = redact(tricky)
        assert "p@ss" not in shown and "pw%40x" not in shown and "pw-q" not in shown, shown
    assert scrub(f"failed: {url} (user rf, password {PASSWORD})", url) == (
        f"failed: {redact(url)} (user rf, password ***)"
    )


# -- (a) bad connections are StoreErrors naming host, port and database, never the password -----


def test_bad_connections_are_store_errors_naming_the_server_never_the_password(pg_url, pg_server):
    port = pg_server.port
    schema = schema_of(pg_url)
    dead = free_port()
    wrong = "wrong-pw-7f3a9c"
    cases = {
        "wrong password": (with_netloc(pg_url, f"{USER}:{wrong}@127.0.0.1:{port}"), wrong, ["127.0.0.1", str(port), DATABASE]),
        "unknown database": (with_netloc(pg_url, f"{USER}:{PASSWORD}@127.0.0.1:{port}", "/no_such_db"), PASSWORD,
                             ["127.0.0.1", str(port), "no_such_db"]),
        "nothing listens": (with_netloc(pg_url, f"{USER}:{PASSWORD}@127.0.0.1:{dead}"), PASSWORD,
                            ["127.0.0.1", str(dead), DATABASE]),
        # libpq would take a Unix socket; the store requires a host.
        "no host": (f"postgresql://{USER}:{PASSWORD}@/{DATABASE}?schema={schema}", PASSWORD, ["host", DATABASE]),
        "no host, no user": (f"postgresql:///{DATABASE}?schema={schema}", PASSWORD, ["host", DATABASE]),
    }
    for why, (url, secret, named) in cases.items():
        t0 = time.monotonic()
        with pytest.raises(rf.StoreError) as info:
            rf.Engine(url)
        assert time.monotonic() - t0 < 20, f"{why}: a bad connection fails promptly"
        message = str(info.value)
        for part in named:
            assert part in message, f"{why}: {part!r} not in {message!r}"
        assert_hidden(secret, *texts_of(info.value))
        assert_hidden(PASSWORD, *texts_of(info.value))


def test_repr_and_cli_output_never_show_the_password(pg_url, ledger):
    with rf.Engine(pg_url) as engine:
        shown = [repr(engine), str(engine)]
        engine.submit(five, {"x": 1}, run_id="shown")
    assert_hidden(PASSWORD, *shown)
    assert "127.0.0.1" in shown[0] and DATABASE in shown[0]

    env = dict(os.environ)
    worker = subprocess.run(
        [sys.executable, "-m", "resumeflow", "worker", "rf_pool_workflows:five", "--db", pg_url, "--idle-timeout", "0.5"],
        capture_output=True, text=True, cwd=TESTS, env=env, timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    assert redact(pg_url) in worker.stderr, "the worker names its store, redacted"
    assert_hidden(PASSWORD, worker.stdout, worker.stderr)

    bad = with_netloc(pg_url, f"{USER}:wrong-pw-cli@127.0.0.1:{urlsplit(pg_url).port}")
    for args in (["runs", "--json"], ["status", "shown"], ["worker", "rf_pool_workflows:five", "--idle-timeout", "0.1"]):
        proc = subprocess.run([sys.executable, "-m", "resumeflow", *args, "--db", bad],
                              capture_output=True, text=True, cwd=TESTS, env=env, timeout=120)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and "127.0.0.1" in proc.stderr, (args, proc.stderr)
        assert_hidden("wrong-pw-cli", proc.stdout, proc.stderr)


# -- (b) a schema written by a newer version is refused and left as it is -----------------------


def test_a_schema_from_a_newer_version_is_refused_and_its_data_kept(pg_url, pg_server):
    schema = schema_of(pg_url)
    with rf.Engine(pg_url) as engine:
        engine.run(chain, {"x": 1}, run_id="kept")
    version_sql = f"SELECT value FROM {schema}.meta WHERE key = 'schema_version'"
    current = pg_server.sql(version_sql)
    assert current and current != "999"
    pg_server.sql(f"UPDATE {schema}.meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(rf.StoreError, match="999") as info:
        rf.Engine(pg_url)
    assert "version" in str(info.value)
    assert pg_server.sql(version_sql) == "999", "a newer schema is neither migrated nor downgraded"
    pg_server.sql(f"UPDATE {schema}.meta SET value = '{current}' WHERE key = 'schema_version'")
    with rf.Engine(pg_url) as engine:
        state = engine.get_current_state("kept")
    assert state.status == "completed" and state.values["c"] == 25


# -- (c) four worker "hosts" share one queue --------------------------------------------------


def cli_worker(db: str, host: str, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, RESUMEFLOW_HOST_ID=host, **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "resumeflow", "worker", "rf_pool_workflows:five", "--db", db, "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TESTS, env=env,
    )


def lease_owners(engine: rf.Engine, run_id: str) -> set[str]:
    return {e["data"]["owner"] for e in engine.events(run_id, after_seq=0, limit=10_000) if e["kind"] == "LeaseAcquired"}


def test_four_hosts_run_300_queued_runs_each_node_exactly_once(pg_url, ledger):
    with rf.Engine(pg_url) as engine:
        for i in range(300):
            engine.submit(five, {"x": i}, run_id=f"h{i:03d}")
        assert len(engine.list_runs("queued")) == 300
    hosts = [f"host-{n}" for n in range(4)]
    workers = [cli_worker(pg_url, host, "--idle-timeout", "3") for host in hosts]
    outs = []
    for w in workers:
        try:
            outs.append(w.communicate(timeout=240))
        except BaseException:
            for other in workers:
                other.kill()
            raise
    for w, (_out, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err
    finished = [json.loads(out)["finished"] for out, _ in outs]
    assert sum(finished) == 300, finished
    assert sum(1 for n in finished if n) >= 2, f"the hosts shared the queue: {finished}"
    ran = executions(ledger)
    assert len(ran) == 300 * 5 and set(ran.values()) == {1}, "every node of every run executed exactly once"
    took_by: set[str] = set()
    with rf.Engine(pg_url) as engine:
        for i in range(300):
            state = engine.get_current_state(f"h{i:03d}")
            assert state.status == "completed" and state.values["e"] == expected(i), (i, state.status)
            owners = lease_owners(engine, f"h{i:03d}")
            assert len(owners) == 1, (i, owners)  # one worker took each run
            [owner] = owners
            on = [h for h in hosts if h in owner]
            assert len(on) == 1, f"RESUMEFLOW_HOST_ID names the owner's host: {owner!r}"
            took_by.add(on[0])
    assert len(took_by) >= 2, took_by


# -- (d) kill -9 on one host; another host waits out the lease, then finishes the run ------------


def test_a_worker_killed_on_one_host_is_recovered_from_another_after_its_lease(pg_url, ledger):
    lease = 6.0
    with rf.Engine(pg_url) as engine:
        engine.submit(five, {"x": 4}, run_id="killed")
    first = spawn(
        textwrap.dedent(f"""
            import resumeflow as rf
            from rf_pool_workflows import five
            with rf.Engine({pg_url!r}, lease_seconds={lease}) as e:
                e.work([five], idle_timeout=60)
        """),
        env_extra={"RESUMEFLOW_HOST_ID": "host-a", "RF_SLOW_C": "60"},
    )
    try:
        while_alive(first, lambda: "killed/c" in executions(ledger))
        with rf.Engine(pg_url) as watcher:  # d committed (not only started) before the kill
            while_alive(first, lambda: watcher.get_current_state("killed").nodes["d"].status == "completed", timeout=30)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    killed_at = time.time()
    recovered = python(
        textwrap.dedent(f"""
            import json, time, resumeflow as rf
            from rf_pool_workflows import five
            with rf.Engine({pg_url!r}, lease_seconds={lease}) as e:
                deadline = time.time() + 60
                runs = []
                while not runs and time.time() < deadline:
                    at = time.time()
                    runs = e.recover([five])
                    if not runs:
                        time.sleep(0.1)
                state = runs[0].wait(timeout=60)
                print(json.dumps({{"at": at, "ids": [r.id for r in runs], "status": state.status,
                                   "e": state.values.get("e")}}))
        """),
        env_extra={"RESUMEFLOW_HOST_ID": "host-b"},
    )
    assert recovered.returncode == 0, recovered.stderr
    result = json.loads(recovered.stdout)
    assert result["ids"] == ["killed"] and result["status"] == "completed"
    assert result["e"] == expected(4)
    # The lease was renewed at most lease/3 before the kill: nobody on another host may take
    # the run before it expired, whatever it knows about processes on its own host.
    assert result["at"] - killed_at >= lease / 2, f"taken {result['at'] - killed_at:.2f} s after the kill"
    ran = executions(ledger)
    assert ran["killed/a"] == ran["killed/b"] == ran["killed/d"] == ran["killed/e"] == 1
    assert ran["killed/c"] == 2, "only the in-flight node ran again"
    with rf.Engine(pg_url) as engine:
        owners = lease_owners(engine, "killed")
    assert len(owners) == 2 and any("host-a" in o for o in owners) and any("host-b" in o for o in owners), owners


# -- (e) the server restarts while a run is between nodes ------------------------------------------


def test_a_server_restart_between_nodes_loses_nothing_completed(pg_url, pg_server, ledger):
    child = spawn(
        textwrap.dedent(f"""
            import json, resumeflow as rf
            from rf_workflows import chain
            outcome = {{}}
            try:
                e = rf.Engine({pg_url!r})
                try:
                    s = e.run(chain, {{"x": 2}}, run_id="restart")
                    outcome = {{"outcome": s.status}}
                finally:
                    try:
                        e.close()
                    except Exception as err:
                        outcome.setdefault("close", type(err).__name__)
            except Exception as err:
                outcome = {{"outcome": type(err).__name__, "typed": isinstance(err, rf.ResumeflowError),
                            "message": str(err)}}
            print(json.dumps(outcome), flush=True)
        """),
        env_extra={"RF_SLOW_B": "3"},
    )
    try:
        while_alive(child, lambda: any(n == "b" for n, _ in ledger_entries(ledger)))
        with rf.Engine(pg_url) as observer:
            before = observer.get_current_state("restart")
            assert before.nodes["a"].status == "completed" and before.nodes["b"].status == "running"
            pg_server.restart()  # every connection is cut while b sleeps

            def readable() -> bool:  # the observer's own engine reconnects too
                try:
                    return observer.get_current_state("restart").nodes["a"].status == "completed"
                except rf.StoreError:
                    return False

            wait_for(readable, timeout=30)
        out, err = child.communicate(timeout=90)
    except BaseException:
        child.kill()
        child.communicate()
        raise
    assert child.returncode == 0, err
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["outcome"] == "completed" or outcome.get("typed") is True, outcome
    with rf.Engine(pg_url) as engine:
        state = engine.get_current_state("restart")
        if state.status != "completed":  # the run failed with a typed error: it resumes
            runs = engine.recover([chain])
            state = (runs[0] if runs else engine.resume("restart", chain)).wait(timeout=60)
        assert state.status == "completed", state.status
        assert state.values == {"a": 3, "b": 30, "c": 35}
    entries = ledger_entries(ledger)
    assert [e for e in entries if e[0] == "a"] == [("a", 1)], "a completed before the restart: never again"
    assert 1 <= sum(1 for e in entries if e[0] == "b") <= 2


def test_blob_dir_keeps_large_values_as_files_every_host_can_read(pg_url, tmp_path):
    """``rf.Engine(url, blob_dir=...)``: values at the threshold go to files in the shared
    directory (written before their commit), smaller ones stay in the database; a second
    engine on the same directory reads both; without ``blob_dir`` such a value reads as an
    error naming the missing option, and ``blob_dir`` on a SQLite file is refused."""
    import pytest as _pytest

    shared = tmp_path / "shared-blobs"
    wf = rf.Workflow("blobs")

    @wf.node
    def big() -> bytes:
        return b"x" * 300_000

    @wf.node
    def small(big: bytes) -> int:
        return len(big)

    with rf.Engine(pg_url, blob_dir=shared, blob_file_threshold=100_000) as engine:
        state = engine.run(wf, run_id="b1")
        assert state.status == "completed"
    files = [p for p in shared.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].stat().st_size >= 100_000, files
    with rf.Engine(pg_url, blob_dir=shared) as other:
        assert other.get_partial_results("b1") == {"big": b"x" * 300_000, "small": 300_000}
        assert other.check_integrity() == "ok"
    with rf.Engine(pg_url) as without:
        values = without.get_partial_results("b1")
        assert values["small"] == 300_000, "values in the database read as ever"
        assert isinstance(values["big"], rf.Undecodable) and "blob_dir" in str(values["big"]), values["big"]
    with _pytest.raises(rf.InvalidArgument, match="blob_dir"):
        rf.Engine(str(tmp_path / "x.db"), blob_dir=shared)


# -- (f) a frozen worker is fenced: another host takes the run after the lease, the first's
#        writes are refused when it thaws ---------------------------------------------------------


def session_states(pg_server: PgCluster, pid: int) -> list[str]:
    """The server-side states (pg_stat_activity) of process ``pid``'s connections to the test
    server, found by the local ports of its TCP sockets."""
    from pathlib import Path

    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == pg_server.port:
            ports.append(int(local.rsplit(":", 1)[1], 16))
    if not ports:
        return []
    return pg_server.sql(
        f"SELECT state FROM pg_stat_activity WHERE client_port IN ({', '.join(map(str, ports))})"
    ).splitlines()


def freeze(pg_server: PgCluster, child: subprocess.Popen[str], *, inside_transaction: bool) -> None:
    """SIGSTOPs ``child`` where none (``inside_transaction=False``) or one
    (``inside_transaction=True``) of its sessions is in an open transaction; retries (SIGCONT,
    a pause, SIGSTOP) until it lands so."""
    for _ in range(500):
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(0.02)  # the server finishes what it was sent
        states = session_states(pg_server, child.pid)
        in_transaction = any(st.startswith("idle in transaction") or st == "active" for st in states)
        if states and in_transaction == inside_transaction:
            return
        os.kill(child.pid, signal.SIGCONT)
        time.sleep(random.uniform(0.003, 0.05))
    raise AssertionError(f"could not freeze the worker {'inside' if inside_transaction else 'outside'} a transaction")


TAKE_OVER = textwrap.dedent("""
    import json, sys, time, resumeflow as rf
    import rf_workflows
    wf = getattr(rf_workflows, sys.argv[1])
    with rf.Engine(sys.argv[2]) as e:
        deadline = time.time() + 60
        runs = []
        while not runs and time.time() < deadline:
            at = time.time()
            runs = e.recover([wf])
            if not runs:
                time.sleep(0.05)
        state = runs[0].wait(timeout=60)
        print(json.dumps({"at": at, "ids": [r.id for r in runs], "status": state.status}))
""")


def take_over(workflow: str, url: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Another host (``RESUMEFLOW_HOST_ID=host-b``) recovers the run of ``workflow`` as soon as
    it may, and finishes it; prints when it took it."""
    env = dict(os.environ, RESUMEFLOW_HOST_ID="host-b", RF_SLOW_B="0")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", TAKE_OVER, workflow, url], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_a_frozen_worker_is_fenced_by_another_host_and_its_late_writes_refused(pg_url, pg_server, ledger):
    """host-a's worker is SIGSTOPped inside node b, between transactions, and stays stopped past
    its 2 s lease; host-b (its own RESUMEFLOW_HOST_ID: the worker's process is alive anyway)
    takes the run only once the lease expired and finishes it. Thawed, host-a's next write is
    refused (LeaseLost) and it writes nothing more: the run is host-b's."""
    lease = 2.0
    worker = spawn(
        textwrap.dedent(f"""
            import resumeflow as rf
            from rf_workflows import chain
            with rf.Engine({pg_url!r}, lease_seconds={lease}) as e:
                try:
                    e.run(chain, {{"x": 1}}, run_id="frozen")
                    print("finished", flush=True)
                except rf.LeaseLost:
                    print("fenced", flush=True)
        """),
        env_extra={"RESUMEFLOW_HOST_ID": "host-a", "RF_SLOW_B": "4"},
    )
    try:
        while_alive(worker, lambda: any(n == "b" for n, _ in ledger_entries(ledger)))
        # Frozen inside a write transaction, the worker would hold the run's row lock:
        # test_a_worker_frozen_inside_a_write_transaction_does_not_block_the_takeover.
        freeze(pg_server, worker, inside_transaction=False)
        stopped_at = time.time()
        other = take_over("chain", pg_url, timeout=120)
        assert other.returncode == 0, other.stderr
        taken = json.loads(other.stdout)
        assert taken["ids"] == ["frozen"] and taken["status"] == "completed", taken
        # Renewed at most lease/3 before the freeze: not taken before it expired.
        assert taken["at"] - stopped_at >= lease / 2, f"taken {taken['at'] - stopped_at:.2f} s after the freeze"
        with rf.Engine(pg_url) as engine:
            before = engine.events("frozen", after_seq=0, limit=10_000)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        try:
            out, err = worker.communicate(timeout=60)
        except BaseException:
            worker.kill()
            worker.communicate()
            raise
    assert worker.returncode == 0, err
    assert out.strip() == "fenced", f"the thawed worker's write was refused and it stopped: {out!r} {err[-2000:]!r}"
    with rf.Engine(pg_url) as engine:
        after = engine.events("frozen", after_seq=0, limit=10_000)
        state = engine.get_current_state("frozen")
        assert engine.check_integrity() == "ok"
    assert after == before, "the thawed worker wrote nothing (not even its lease or a NodeCompleted)"
    assert state.status == "completed" and state.values == {"a": 2, "b": 20, "c": 25}
    assert state.nodes["a"].attempt == 1 and state.nodes["b"].attempt == 2 and state.nodes["c"].attempt == 1
    completed = [e["node"] for e in after if e["kind"] == "NodeCompleted"]
    assert completed == ["a", "b", "c"], "each node committed once"
    owners = [e["data"]["owner"] for e in after if e["kind"] == "LeaseAcquired"]
    assert len(owners) == 2 and "host-a" in owners[0] and "host-b" in owners[1], owners
    assert ledger_entries(ledger) == [("a", 1), ("b", 1), ("b", 2), ("c", 1)], (
        "only the in-flight b ran again (on host-b); the thawed worker ran nothing after it"
    )


def test_a_worker_frozen_inside_a_write_transaction_does_not_block_the_takeover(pg_url, pg_server, ledger):
    """host-a's worker saves partial state back to back (a write transaction each) and is
    SIGSTOPped inside one of them; after its 2 s lease host-b must take the run over.
    Regression: the frozen session held the run's row lock (FOR UPDATE) while "idle in
    transaction", so host-b's recover() waited as long as the freeze lasted; the store's
    sessions now have idle_in_transaction_session_timeout = 1 s."""
    worker = spawn(
        textwrap.dedent(f"""
            import resumeflow as rf
            from rf_workflows import busy
            with rf.Engine({pg_url!r}, lease_seconds=2.0) as e:
                try:
                    e.run(busy, run_id="frozen-in-txn")
                except rf.LeaseLost:
                    print("fenced", flush=True)
        """),
        env_extra={"RESUMEFLOW_HOST_ID": "host-a", "RF_BUSY_SAVES": "1000000"},
    )
    try:
        while_alive(worker, lambda: any(n == "busy" for n, _ in ledger_entries(ledger)))
        freeze(pg_server, worker, inside_transaction=True)
        try:
            other = take_over("busy", pg_url, timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("host-b's recover() still waited 10 s after the freeze (lease: 2 s)") from None
        assert other.returncode == 0, other.stderr
        assert json.loads(other.stdout)["ids"] == ["frozen-in-txn"]
    finally:
        worker.kill()
        worker.communicate(timeout=30)


def test_an_open_engine_reads_and_writes_right_after_a_server_restart(pg_url, pg_server):
    """Pooled connections die with a restart: the first read on each and the writer's next
    transaction start again on a new connection instead of failing (regression: each failed
    once with 'terminating connection due to administrator command')."""
    wf = rf.Workflow("after_restart")

    @wf.node
    def one() -> int:
        return 1

    with rf.Engine(pg_url) as engine:
        assert engine.run(wf, run_id="r1").status == "completed"
        engine.list_runs()  # several pooled readers in use
        pg_server.restart()
        assert engine.get_current_state("r1").status == "completed"
        assert [r.run_id for r in engine.list_runs()] == ["r1"]
        assert engine.run(wf, run_id="r2").status == "completed"
        assert engine.check_integrity() == "ok"
