"""A throwaway PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a cluster in a
temporary folder, a Unix socket only (no TCP port), stopped at the end of the session.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user the
Debian package creates. ``start()`` returns None with a printed reason when the server cannot
be started (no binaries, no such user); the tests that need it then skip with that reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class PgServer:
    root: Path
    bin_dir: Path
    run_as: Optional[str]
    user: str = "flopgate"
    created: int = 0

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        command = list(argv)
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self._run(str(self.bin_dir / "psql"), "-h", str(self.socket_dir), "-U", self.user,
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql)
        if done.returncode:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: Optional[str] = None) -> str:
        """A new, empty database's URL (named ``name``, else ``ledger_N``)."""
        self.created += 1
        name = name or f"ledger_{self.created}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                  "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _bin_dir() -> Optional[Path]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


def start() -> tuple[Optional[PgServer], str]:
    """A running server and "" , or None and why not."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        return None, "PostgreSQL is not installed (apt-get install postgresql)"
    run_as = None
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no 'postgres' user to run the server"
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="flopgate-pg-"))
    server = PgServer(root, bin_dir, run_as)
    server.socket_dir.mkdir()
    if run_as:
        shutil.chown(root, run_as)
        shutil.chown(server.socket_dir, run_as)
    steps = [
        [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", server.user, "--auth=trust",
         "--no-sync", "-E", "UTF8"],
        [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w",
         "-t", "60", "-o",
         f"-c listen_addresses='' -k {server.socket_dir} -c fsync=on -c max_connections=60",
         "start"],
    ]
    for argv in steps:
        done = server._run(*argv)
        if done.returncode:
            log = root / "server.log"
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            if log.exists():
                detail += log.read_text(errors="replace").strip().splitlines()[-1:]
            shutil.rmtree(root, ignore_errors=True)
            return None, f"{Path(argv[0]).name} failed: {' | '.join(detail)}"
    return server, ""


def raw_sql(where: str, statement: str, **params) -> list:
    """Run one statement on the ledger's storage behind its back (to tamper with it, as an
    attacker with write access to the file or database would); the rows it returns."""
    if where.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(where)
        try:
            with engine.begin() as conn:
                result = conn.execute(sqlalchemy.text(statement), params)
                return result.all() if result.returns_rows else []
        finally:
            engine.dispose()
    conn = sqlite3.connect(where)
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()
