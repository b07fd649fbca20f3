"""A throwaway PostgreSQL for the tests: one cluster per session, one database per test.

`PostgresServer.start()` runs the machine's server binaries (`/usr/lib/postgresql/*/bin`, newest version):
`initdb` into a temporary folder and `pg_ctl start` on a free port of 127.0.0.1 (its socket in that folder,
fsync off: nothing here must survive a crash). `initdb` refuses to run as root, so under root the folder is
given to the `postgres` system user and both commands run as it (`runuser -u postgres --`).
`DLOOP_TEST_POSTGRES_URL` (any `postgresql://` URL of a role that may create databases) uses an existing
server instead; the tests then create and drop databases named `dloop_test_<pid>_<n>` on it.

Each test gets a new database: `CREATE DATABASE ... TEMPLATE` a copy of one migrated once per session (the
`db` fixture's schema is then current and `dloop migrate` finds nothing to do), or of `template0` (empty:
for tests of the migrations themselves). It is dropped after the test.

Under `CI=true` a PostgreSQL that cannot be found or started fails the tests that need it; elsewhere they
are skipped, with the reason shown by `-ra`.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devtools.anvil import free_port
from storage.migrations import upgrade

T = TypeVar("T")

URL_VARIABLE = "DLOOP_TEST_POSTGRES_URL"
SYSTEM_USER = "postgres"


FOLDER_PREFIX = "dloop-pg-"  # + the test session's pid + "-" + a random part


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PostgresUnavailable(Exception):
    """No PostgreSQL for the tests: no server binaries, or the server did not start."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def async_url(url: str) -> str:
    """`postgresql://` or `postgres://` as the service's asyncpg URL (`postgresql+asyncpg://`)."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def server_bindir() -> Path:
    """The newest installed server's bin folder (Debian's /usr/lib/postgresql/<version>/bin)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        raise PostgresUnavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)")

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return 0.0

    return Path(max(found, key=version)).parent


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private event loop in a worker thread: callable from sync fixtures
    whether or not the test's own loop exists (asyncpg connections never cross loops)."""
    result: list[T] = []
    failure: list[BaseException] = []

    async def main() -> None:
        result.append(await make())

    def target() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="postgres-admin")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@dataclass
class PostgresServer:
    """A PostgreSQL the tests may create databases on: started here (`start`), or an existing one (`url`)."""

    admin_url: str  # postgresql+asyncpg://... of a maintenance database (`postgres`)
    folder: Path | None = None  # the cluster's folder when this process started it
    bindir: Path | None = None
    as_postgres: bool = False
    prefix: str = field(default_factory=lambda: f"dloop_test_{os.getpid()}")
    _names: Iterator[int] = field(default_factory=itertools.count)
    template: str | None = None

    # -- the cluster ------------------------------------------------------------------------------------

    @classmethod
    def from_environment(cls) -> PostgresServer:
        url = os.environ.get(URL_VARIABLE)
        if url:
            try:
                server = cls(admin_url=async_url(url))
                server.execute("SELECT 1")
            except (OSError, SQLAlchemyError) as exc:
                raise PostgresUnavailable(f"{URL_VARIABLE}: cannot connect: {exc}") from exc
            return server
        return cls.start()

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = server_bindir()
        as_postgres = os.geteuid() == 0
        cls._stop_abandoned(bindir, as_postgres)
        folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        if as_postgres:
            shutil.chown(folder, SYSTEM_USER, SYSTEM_USER)
        port = free_port()
        server = cls(
            admin_url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres",
            folder=folder,
            bindir=bindir,
            as_postgres=as_postgres,
        )
        try:
            server._command(
                "initdb",
                "-D",
                str(folder / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            options = (
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            server._command(
                "pg_ctl",
                "-D",
                str(folder / "data"),
                "-o",
                options,
                "-l",
                str(folder / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            )
        except PostgresUnavailable:
            server.stop()
            raise
        return server

    @classmethod
    def _stop_abandoned(cls, bindir: Path, as_postgres: bool) -> None:
        """Stop and remove the clusters of test sessions that were killed before their teardown (the folder
        names the session's pid, which is gone)."""
        for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
            pid = folder.name.removeprefix(FOLDER_PREFIX).split("-", 1)[0]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            cls(admin_url="", folder=folder, bindir=bindir, as_postgres=as_postgres).stop()

    def _command(self, program: str, *args: str) -> None:
        assert self.bindir is not None
        argv = [str(self.bindir / program), *args]
        if self.as_postgres:
            argv = ["runuser", "-u", SYSTEM_USER, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd="/")
        if done.returncode != 0:
            log = ""
            if self.folder is not None and (self.folder / "server.log").is_file():
                log = (self.folder / "server.log").read_text(errors="replace")[-2000:]
            raise PostgresUnavailable(f"{program} failed ({done.returncode}): {done.stderr.strip()} {log}")

    def stop(self) -> None:
        if self.folder is None:
            if self.template is not None:
                self.drop(self.template)
            return
        if (self.folder / "data" / "postmaster.pid").exists():
            with suppress(PostgresUnavailable):
                self._command("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- databases --------------------------------------------------------------------------------------

    def execute(self, *statements: str) -> None:
        async def run() -> None:
            engine = create_async_engine(self.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
            try:
                async with engine.connect() as conn:
                    for statement in statements:
                        await conn.execute(text(statement))
            finally:
                await engine.dispose()

        run_async(run)

    def url_of(self, name: str) -> str:
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def create(self, *, migrated: bool) -> str:
        """A new database (migrated to the newest schema, or empty); its URL."""
        name = f"{self.prefix}_{next(self._names)}"
        template = self._migrated_template() if migrated else "template0"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url_of(name)

    def drop(self, name_or_url: str) -> None:
        name = make_url(name_or_url).database if "://" in name_or_url else name_or_url
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _migrated_template(self) -> str:
        if self.template is None:
            name = f"{self.prefix}_template"
            self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
            run_async(lambda: upgrade(self.url_of(name)))
            self.template = name
        return self.template

    @contextmanager
    def database(self, *, migrated: bool) -> Iterator[str]:
        url = self.create(migrated=migrated)
        try:
            yield url
        finally:
            self.drop(url)
