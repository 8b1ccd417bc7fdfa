"""A PostgreSQL server of a test's own: initdb into a temp folder, a free port, stop and start at will.

Fault tests stop and restart the database under running services, so they must not share the machine's
cluster. initdb refuses to run as root; as root, the server runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support import processes


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return on_path


class PostgresServer:
    """One throwaway cluster; `url` is the SQLAlchemy asyncpg URL of its `mlcd` database."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlcd-pg-"))
        self.data = self.root / "data"
        self.port = processes.free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self.start()
        self._run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlcd")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/mlcd"

    @property
    def dsn(self) -> str:
        """The libpq form, for psql."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/mlcd"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._pg_ctl("start", "-w", "-t", "60", "-o", options, "-l", str(self.root / "server.log"))

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: disconnect clients; `immediate`: as if it crashed)."""
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def running(self) -> bool:
        status = subprocess.run(
            self._argv(_bin("pg_ctl"), "status", "-D", str(self.data)), capture_output=True
        )
        return status.returncode == 0

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        self._run(_bin("pg_ctl"), *args, "-D", str(self.data))

    def _run(self, *argv: str) -> None:
        done = subprocess.run(self._argv(*argv), capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stdout}{done.stderr}")

    def _argv(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else list(argv)
