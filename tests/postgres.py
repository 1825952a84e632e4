"""A throwaway PostgreSQL server: initdb in a temporary directory, listening only on a unix socket in
that directory (no TCP), run as an unprivileged user since PostgreSQL refuses to run as root.

    server = PostgresServer.start()          # Debian's postgresql (scripts/dev installs it), or initdb on PATH
    url = server.create_database()           # postgresql://postgres@/db1?host=/tmp/peerix-pg-...
    server.restart(); server.stop()          # stop also removes the directory

Run as a script, it starts one and waits: `python tests/postgres.py` prints a URL for bench/tracker.py.
"""

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

UNPRIVILEGED = "nobody"  # who runs the server when the tests run as root
PASSWORD_USER = "peerix_password"  # a role that must log in with its password (scram-sha-256)


def bindir() -> Path | None:
    """Where initdb and pg_ctl are: Debian keeps them per version in /usr/lib/postgresql/N/bin."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def why_no_postgres() -> str | None:
    if bindir() is None:
        return "PostgreSQL is not installed (scripts/dev test installs Debian's postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            return f"the tests run as root and there is no user {UNPRIVILEGED!r} to run PostgreSQL as"
    return None


class PostgresServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.bin = bindir()
        self._databases = 0

    @classmethod
    def start(cls) -> "PostgresServer":
        server = cls(Path(tempfile.mkdtemp(prefix="peerix-pg-")))
        try:
            server._initdb()
            server.run_server("start")
        except BaseException:
            server.stop()
            raise
        return server

    def _as_owner(self, *args: str) -> list[str]:
        return ["runuser", "-u", UNPRIVILEGED, "--", *args] if os.geteuid() == 0 else list(args)

    def _initdb(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        subprocess.run(self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                                      "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C"),
                       check=True, capture_output=True, cwd=self.directory)
        # One role logs in with a password, to test that path; everyone else is trusted on this private socket.
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"local all {PASSWORD_USER} scram-sha-256\n" + hba.read_text())

    def run_server(self, action: str) -> None:
        """pg_ctl start, stop or restart; waits until it is done."""
        # A throwaway server: no fsync, so that neither its stop nor its new databases wait on the disk
        options = (f"-k {self.directory} -c listen_addresses='' -c max_connections=300 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        mode = () if action == "start" else ("-m", "fast")
        subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                                      *mode, "-o", options, action),
                       check=True, capture_output=True, cwd=self.directory)

    def restart(self) -> None:
        self.run_server("restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run_server("stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@/{database}?host={self.directory}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser; its output, unaligned, without headers."""
        result = subprocess.run([str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                                 str(self.directory), "-U", "postgres", "-d", database, "-c", sql],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, owner: str = "postgres") -> str:
        """A new empty database; its URL."""
        self._databases += 1
        name = f"db{self._databases}"
        self.psql(f'CREATE DATABASE {name} OWNER "{owner}"')
        return self.url(name, owner)

    def create_password_role(self, password: str) -> None:
        if not re.fullmatch(r"[\w-]+", password):
            raise ValueError("keep test passwords to letters, digits, - and _")
        self.psql(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{password}'")


if __name__ == "__main__":
    server = PostgresServer.start()
    print(server.create_database(), flush=True)
    print("PostgreSQL is running; Ctrl-C stops and removes it", file=sys.stderr)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # so that sigwait gets them
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()
