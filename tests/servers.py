"""Real servers for tests and benchmarks, started on loopback: PostgreSQL and moto's S3.

PostgreSQL comes from Debian's ``postgresql`` package (``pg_config --bindir`` or
``/usr/lib/postgresql/*/bin``): ``initdb`` into a temporary folder, ``pg_ctl start`` on a free
port. ``initdb`` refuses to run as root, so as root both run as the ``postgres`` user. moto's
standalone server is ``python -m moto.server``; s3fs finds it through ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def postgres_bindir() -> Path | None:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


SUPERUSER_PASSWORD = "crx-test-superuser"


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1, fsync off.

    Connections over TCP authenticate with SCRAM-SHA-256 passwords, as a team's server would,
    so a test that connects as a role proves it knew that role's password (the superuser's is
    ``SUPERUSER_PASSWORD``); only the cluster's own socket trusts its local user.
    """

    bindir: Path
    folder: Path
    port: int

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        folder = Path(tempfile.mkdtemp(prefix="crx-pg-"))
        os.chmod(folder, 0o777)
        server = cls(bindir, folder, free_port())
        password_file = folder / "superuser-password"
        password_file.write_text(SUPERUSER_PASSWORD + "\n")
        os.chmod(password_file, 0o644)
        server._run(
            "initdb",
            "-D",
            str(folder / "data"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={password_file}",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )
        server._run(
            "pg_ctl",
            "-D",
            str(folder / "data"),
            "-l",
            str(folder / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start",
        )
        return server

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr or result.stdout}")

    def url(
        self, database: str = "postgres", user: str = "postgres", password: str | None = None
    ) -> str:
        """The URL of ``database`` as ``user`` (default: the superuser, with its password)."""
        if password is None and user == "postgres":
            password = SUPERUSER_PASSWORD
        secret = f":{password}" if password is not None else ""
        return f"postgresql+psycopg://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class MotoServer:
    """moto's standalone S3 server on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int

    @classmethod
    def start(cls) -> MotoServer:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(port, 60, process)
        return cls(process, port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
