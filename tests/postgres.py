"""A throwaway PostgreSQL server for the ledger tests, and the `url` fixture that runs a test on both
SQLite and PostgreSQL.

The server is started once per session, by the first test that needs it (initdb into a temporary dir, `pg_ctl start` on a free port on
127.0.0.1, trust authentication, fsync off) and stopped at the end; every test gets a fresh database.
PostgreSQL refuses to run as root, so under root initdb and pg_ctl run as the `postgres` user (created
by Debian's package) through `runuser`.

Without PostgreSQL installed the PostgreSQL variants skip with the reason; with TEST_POSTGRES=required
(set by .ci/run) they fail instead. A test module uses it with

    from tests.postgres import BACKENDS, backend_url, postgres_server  # noqa: F401  (fixture)

    @pytest.fixture(params=BACKENDS)
    def url(request, tmp_path): return backend_url(request, tmp_path)
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRED = os.environ.get("TEST_POSTGRES", "") == "required"
RUN_AS = "postgres"  # the unprivileged account the server runs under when the tests run as root
SUPERUSER = "kbchat"
BACKENDS = ("sqlite", "postgresql")
_names = itertools.count(1)


@dataclass
class PostgresServer:
    """A running server: `url(db)` is an SQLAlchemy URL for database `db` on it."""

    host: str
    port: int
    created: int = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.created += 1
        return self.url(name)


def _binaries() -> Path | None:
    """The bin dir of the newest installed PostgreSQL (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"PostgreSQL is required (TEST_POSTGRES=required) but {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason} (install Debian's postgresql package to run these)")


def _as(user: str | None, command: list[str]) -> list[str]:
    return command if user is None else ["runuser", "-u", user, "--", *command]


def _run(command: list[str], user: str | None) -> None:
    command = _as(user, command)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}".strip())


def _announce(request: pytest.FixtureRequest, line: str) -> None:
    """One line in the test log (not captured), so a CI log shows the server really ran."""
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[postgres] {line}")


# One server per session: every test module imports the fixture (so each has its own copy of it), and
# they share what the first one started, or the reason it could not start.
_started: PostgresServer | None = None
_unavailable_because: str | None = None


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """A PostgreSQL server for this test session, stopped (and its files removed) at the end."""
    global _started, _unavailable_because
    if _started is None and _unavailable_because is None:
        try:
            _started = _start(request)
        except _Unavailable as exc:
            _unavailable_because = str(exc)
    if _unavailable_because is not None:
        _unavailable(_unavailable_because)
    assert _started is not None
    return _started


class _Unavailable(Exception):
    pass


def _start(request: pytest.FixtureRequest) -> PostgresServer:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise _Unavailable("the psycopg driver is not installed (pip install -e '.[postgres]')") from None
    bin_dir = _binaries()
    if bin_dir is None:
        raise _Unavailable("no pg_ctl under /usr/lib/postgresql/*/bin or on PATH")
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            raise _Unavailable(f"running as root and there is no {RUN_AS!r} user to run the server as") from None
        user = RUN_AS
    # Not under pytest's tmp dir: that is private to root, and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="kbchat-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    if user is not None:
        account = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
    port = 0
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
              "--no-locale", "--no-sync"], user)
        for _attempt in range(3):  # another process may take the free port before the server does
            port = _free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off -c full_page_writes=off"
            try:
                _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                      "start"], user)
                break
            except RuntimeError:
                port = 0
        if not port:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed three times; server log: {tail}")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise _Unavailable(f"the server did not start: {' '.join(str(exc).split())}") from exc
    server = PostgresServer("127.0.0.1", port)

    def stop() -> None:
        subprocess.run(_as(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
        _announce(request, f"stopped after {server.created} test databases")

    request.config.add_cleanup(stop)
    version = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True).stdout
    _announce(request, f"{version.strip()} started on 127.0.0.1:{port} (data in {data}; "
                       f"TEST_POSTGRES={os.environ.get('TEST_POSTGRES', 'unset')})")
    return server


def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """For a fixture parametrised by BACKENDS: an SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
