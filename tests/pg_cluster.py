"""A throwaway PostgreSQL cluster for the tests: ``initdb`` into a temporary directory, a
server on a free loopback port, a role ``rf`` (password ``s3cret-pw``) owning database
``rftest``, stopped and removed when the session ends.

Durability is what the tests check, so the cluster keeps ``fsync``, ``synchronous_commit`` and
``full_page_writes`` on. ``initdb`` and ``postgres`` refuse to run as root: as root, the
cluster's directory is given to the ``postgres`` OS user and the server binaries run as that
user (``runuser``, else ``setpriv``); as anyone else they run directly. Every client
connection (TCP and the Unix socket in the cluster's directory) authenticates with
scram-sha-256.

The server binaries are the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout), or the
directory named by ``RESUMEFLOW_PG_BIN``; ``psql`` is that directory's, else the one on PATH.

From a shell (any python3, standard library only), e.g. for ``cargo test`` on PostgreSQL::

    python3 tests/pg_cluster.py start      # prints URL=postgresql://... and DIR=/tmp/rf-pg-...
    python3 tests/pg_cluster.py stop DIR   # stops that server and removes DIR

``start`` returns once the server accepts connections and leaves it running; the URL is the
test role's, without a schema. ``stop`` of a DIR that no longer exists does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USER = "rf"
PASSWORD = "s3cret-pw"
DATABASE = "rftest"
SUPERUSER = "rf_admin"
#: The OS user that owns the cluster when the tests run as root.
OS_USER = "postgres"
#: In a cluster's directory: what ``stop DIR`` (``PgCluster.attach``) needs to find its server.
STATE_FILE = "cluster.json"


class PgUnavailable(Exception):
    """No PostgreSQL server binaries here (or no way to run them): tests that need one skip
    (fail under CI)."""


def find_bindir() -> Path:
    """The directory of ``initdb``/``pg_ctl``/``postgres``: ``RESUMEFLOW_PG_BIN``, else the
    newest ``/usr/lib/postgresql/<version>/bin``. ``PgUnavailable`` when there is none."""
    override = os.environ.get("RESUMEFLOW_PG_BIN")
    if override:
        path = Path(override)
        if not (path / "initdb").is_file():
            raise PgUnavailable(f"RESUMEFLOW_PG_BIN={override} has no initdb")
        return path

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.is_file()]
    if not found:
        raise PgUnavailable(
            "no PostgreSQL server binaries (no /usr/lib/postgresql/*/bin/initdb; "
            "install Debian's postgresql package or set RESUMEFLOW_PG_BIN)"
        )
    return max(found, key=lambda b: version(b))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _traversable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may reach ``path`` (every ancestor has o+x)."""
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


class PgCluster:
    """One cluster. ``start()`` runs initdb (first time), the server, and creates the test
    role and database; ``stop()`` stops the server and removes the directory. ``root`` is an
    existing cluster's directory (``attach``), else a new temporary one."""

    def __init__(self, bindir: Path | None = None, *, root: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.as_root = os.geteuid() == 0
        self.runas: list[str] = []
        if self.as_root:
            self.runas = self._runas_prefix()
        psql = self.bindir / "psql"
        self.psql = str(psql) if psql.is_file() else shutil.which("psql")
        if not self.psql:
            raise PgUnavailable("no psql (neither in the server's bin directory nor on PATH)")
        base = Path(tempfile.gettempdir())
        if self.as_root and not _traversable_by_others(base):
            base = Path("/tmp")  # the postgres user must reach the cluster's directory
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="rf-pg-", dir=base))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self.super_password = secrets.token_hex(16)
        self.port = 0
        self.running = False

    # -- running the server binaries -----------------------------------------------------

    def _runas_prefix(self) -> list[str]:
        import pwd

        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            raise PgUnavailable(
                f"running as root, and there is no {OS_USER!r} OS user to run the server as "
                "(initdb and postgres refuse root)"
            ) from None
        if shutil.which("runuser"):
            return ["runuser", "-u", OS_USER, "--"]
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", "--"]
        raise PgUnavailable("running as root, and neither runuser nor setpriv is installed")

    def _server_cmd(self, tool: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        cmd = [*self.runas, str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.root, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                f"stderr: {proc.stderr}\nserver log:\n{self.log_tail()}"
            )
        return proc

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _initdb(self) -> None:
        if self.as_root:
            shutil.chown(self.root, OS_USER, OS_USER)
        self.root.chmod(0o700)
        pwfile = self.root / "superuser.pw"
        pwfile.write_text(self.super_password + "\n")
        pwfile.chmod(0o600)
        if self.as_root:
            shutil.chown(pwfile, OS_USER, OS_USER)
        try:
            self._server_cmd(
                "initdb", "-D", str(self.data), "--auth=scram-sha-256", "-U", SUPERUSER,
                f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.sockets.mkdir()
        if self.as_root:
            shutil.chown(self.sockets, OS_USER, OS_USER)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# resumeflow tests\ninclude 'resumeflow_test.conf'\n")

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
            # Durability is under test: never trade it for speed here.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "300",
            "password_encryption": "'scram-sha-256'",
            "log_min_messages": "warning",
        }
        path = self.data / "resumeflow_test.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        if self.as_root:
            shutil.chown(path, OS_USER, OS_USER)

    def start(self) -> None:
        if not self.data.exists():
            self._initdb()
        last: Exception | None = None
        for _ in range(5):  # another process may take the free port before the server does
            self.port = free_port()
            self._configure()
            try:
                self._server_cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
            except RuntimeError as e:
                last = e
                if "could not bind" in self.log_tail() or "in use" in self.log_tail():
                    continue
                raise
            self.running = True
            break
        else:
            raise RuntimeError(f"the test PostgreSQL server did not start: {last}")
        self.sql(
            f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'", database="postgres"
        )
        self.sql(f"CREATE DATABASE {DATABASE} OWNER {USER}", database="postgres")

    def save_state(self) -> None:
        """Writes what ``attach`` needs (bindir, port, the superuser's password for ``sql``)
        into the cluster's directory, readable by this user only."""
        path = self.root / STATE_FILE
        state = {"bindir": str(self.bindir), "port": self.port, "super_password": self.super_password}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state) + "\n")

    @classmethod
    def attach(cls, root: Path) -> PgCluster:
        """The cluster a ``start`` (CLI) left running in ``root``. ``ValueError`` if ``root``
        is not such a directory (then nothing there is touched)."""
        try:
            state = json.loads((root / STATE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{root} is not a test cluster's directory (no readable {STATE_FILE}: {e})") from None
        if not root.name.startswith("rf-pg-"):
            raise ValueError(f"{root} is not a test cluster's directory (not named rf-pg-*)")
        try:
            bindir, port, password = Path(state["bindir"]), int(state["port"]), str(state["super_password"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{root / STATE_FILE} lacks {e}") from None
        cluster = cls(bindir, root=root)
        cluster.port, cluster.super_password = port, password
        cluster.running = (cluster.data / "postmaster.pid").exists()
        return cluster

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut; back when it accepts them."""
        self._server_cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-m", "fast", "restart")

    def stop(self, *, remove: bool = True) -> None:
        if self.running:
            self._server_cmd("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop", check=False)
            self.running = False
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- clients ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The test role's URL (no schema)."""
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def psql_cmd(self, sql: str, *, database: str = DATABASE, user: str = SUPERUSER,
                 password: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs ``sql`` with psql over TCP (unaligned, tuples only, stop on the first error)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self.super_password if password is None else password
        env["PGCONNECT_TIMEOUT"] = "10"
        return subprocess.run(
            [self.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", user, "-d", database, "-c", sql],
            capture_output=True, text=True, env=env, timeout=timeout,
        )

    def sql(self, sql: str, *, database: str = DATABASE) -> str:
        """Runs ``sql`` as the superuser; returns psql's output (``-At``). Fails on any error."""
        proc = self.psql_cmd(sql, database=database)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}) on {sql!r}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def accepts_connections(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False


def schema_of(url: str) -> str:
    """The ``schema`` query parameter of a store URL."""
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)["schema"][0]


def wait_until_stopped(cluster: PgCluster, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not cluster.accepts_connections():
            return True
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    """``start``: a cluster left running, ``URL=`` and ``DIR=`` on stdout; ``stop DIR``."""
    import argparse

    parser = argparse.ArgumentParser(prog="pg_cluster.py", description="A throwaway PostgreSQL cluster for the tests.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="start a cluster; prints URL=... and DIR=...")
    stop = commands.add_parser("stop", help="stop the cluster in DIR and remove DIR")
    stop.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            cluster = PgCluster()
        except PgUnavailable as e:
            print(f"pg_cluster.py: {e}", file=sys.stderr)
            return 2
        try:
            cluster.start()
            cluster.save_state()
        except BaseException:
            cluster.stop()
            raise
        print(f"URL={cluster.url}")
        print(f"DIR={cluster.root}", flush=True)
        return 0
    root = args.dir.resolve()
    if not root.exists():
        print(f"pg_cluster.py: {root} does not exist: nothing to stop", file=sys.stderr)
        return 0
    try:
        cluster = PgCluster.attach(root)
    except (ValueError, PgUnavailable) as e:
        print(f"pg_cluster.py: {e}", file=sys.stderr)
        return 2
    cluster.stop()
    if root.exists():
        print(f"pg_cluster.py: could not remove {root}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
