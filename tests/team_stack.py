"""A real team tracking stack on 127.0.0.1: PostgreSQL, an S3 API server and ``mlflow server`` in front.

What docs/distributed-and-servers.md ("A team server") tells a team to run, started the same way:

- PostgreSQL from Debian's package (``initdb`` + ``pg_ctl`` in a temporary data directory; as the
  ``postgres`` user when the tests run as root, since the server refuses root), password
  authentication (``scram-sha-256``), the password handed to clients through ``PGPASSWORD`` only;
- moto's S3 server (``moto_server``), a real HTTP server speaking the S3 API, with one bucket;
- ``mlflow server --backend-store-uri postgresql+psycopg2://mlflow@127.0.0.1:<port>/mlflow
  --artifacts-destination s3://mlflow-artifacts/ --serve-artifacts`` with ``AWS_*`` and
  ``MLFLOW_S3_ENDPOINT_URL`` in its environment only: clients talk HTTP to MLflow and nothing else.

Used by tests/team/ (fixture ``team_stack``, one per session) and benchmarks/team_load.py. Every wait
is bounded; every process runs in its own process group and is stopped at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mlflow_server import MlflowServer, free_port

__all__ = ["BUCKET", "Postgres", "S3Server", "TeamStack", "postgres_bin"]

BUCKET = "mlflow-artifacts"
DB_USER = "mlflow"
DB_NAME = "mlflow"
# test-only credentials for servers that listen on 127.0.0.1 and live as long as the test session
DB_PASSWORD = "prov4ml-test-only"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "prov4ml-test", "AWS_SECRET_ACCESS_KEY": "prov4ml-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


def postgres_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, or Debian's ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: use the ``postgres`` account (Debian's package makes it)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' account to run PostgreSQL as")


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not ready after {timeout:g} s: {_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


class Postgres:
    """One PostgreSQL cluster in a fresh data directory, listening on 127.0.0.1 only."""

    def __init__(self, port: int | None = None) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL not found (Debian: apt-get install postgresql; .ci/install does it)")
        self.bin = bindir
        self.port = port or free_port()
        self.user = _server_user()
        # Not under pytest's tmp_path: that is private to root (0700) and the server runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="prov4ml-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.started = False

    @property
    def url(self) -> str:
        """SQLAlchemy URL as in the docs: user and host, the password from ``PGPASSWORD``."""
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run([str(self.bin / args[0]), *args[1:]], check=True, capture_output=True, timeout=timeout,
                       user=self.user, cwd=self.root)

    def start(self) -> Postgres:
        pwfile = self.root / "pwfile"
        pwfile.write_text(DB_PASSWORD + "\n")
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", DB_USER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        # -k: the Unix socket in the data dir (Debian's default, /var/run/postgresql, may not exist)
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log_path),
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.data}")
        self.started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, password=DB_PASSWORD,
                                dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {DB_NAME}")
        finally:
            conn.close()
        return self

    def connect(self):
        """A psycopg2 connection to the MLflow database (for tests that look at the rows)."""
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, password=DB_PASSWORD,
                                dbname=DB_NAME)

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


class S3Server:
    """moto's S3 API server (``moto_server``) on 127.0.0.1 with the artifact bucket created."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = self.root / "s3.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_KEYS["AWS_DEFAULT_REGION"])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out.extend(item["Key"] for item in page.get("Contents", []))
        return out

    def start(self, timeout: float = 60) -> S3Server:
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        _wait(lambda: self.client().create_bucket(Bucket=BUCKET), timeout, "moto_server", self.proc, self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


class TeamStack:
    """PostgreSQL + S3 + ``mlflow server --serve-artifacts``; ``uri`` is what clients are given.

    Args:
        root: folder for the S3 server's and MLflow server's logs.
        workers: ``mlflow server --workers``.
    """

    def __init__(self, root: Path, workers: int = 2) -> None:
        self.root = Path(root)
        self.postgres = Postgres()
        self.s3 = S3Server(self.root / "s3")
        self.mlflow = MlflowServer(self.root / "mlflow")
        self.mlflow.backend_uri = self.postgres.url
        self.mlflow.artifacts = f"s3://{BUCKET}/"
        self.mlflow.workers = workers
        # the server's secrets: in its environment, never on its command line
        self.mlflow.env = {"PGPASSWORD": DB_PASSWORD, **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint}

    @property
    def uri(self) -> str:
        return self.mlflow.uri

    def start(self) -> TeamStack:
        try:
            self.postgres.start()
            self.s3.start()
            self.mlflow.start(timeout=180)  # a fresh PostgreSQL database: MLflow migrates its schema first
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for part in (self.mlflow, self.s3, self.postgres):
            with contextlib.suppress(Exception):
                part.stop()
