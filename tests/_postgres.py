"""A real, throw-away PostgreSQL server for the tests (Debian's binaries; installed when missing and root).

    with running_postgres() as pg:                 # initdb + pg_ctl start on 127.0.0.1:<free port>
        url = pg.new_database()                     # a fresh database owned by the password-auth test role
        pg.restart()  /  pg.stop(); pg.start()      # outages on the same port

The server runs as a non-root user (initdb and postgres refuse root): ``postgres`` when the
package created it, else ``nobody``. Its data and socket folders live in one temporary folder
owned by that user, removed afterwards. TLS is on, with a certificate for ``localhost`` and
``127.0.0.1`` from a CA made here (`PostgresServer.ca_pem`, `PostgresServer.ca_file`; `PostgresServer.url`
verifies against it); the role ``notes_app`` logs in
with a password (scram-sha-256) over TCP, and ``notes_cert`` needs a password and a client
certificate from that CA. ``fsync`` is off: the data is thrown away.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from psycopg import sql

from server._devcerts import host_names, issue_leaf, new_ca
from tests._live import free_port as _free_port

__all__ = ["PostgresServer", "running_postgres", "find_bin_dir", "APP_ROLE", "CERT_ROLE"]

APP_ROLE = "notes_app"
CERT_ROLE = "notes_cert"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with initdb and pg_ctl, else the ones on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "initdb").exists() else None


def _install_if_root() -> Path | None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env, timeout=600)
    return find_bin_dir()



def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: object) -> str:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@dataclass
class PostgresServer:
    """A running test cluster; passwords are random per run."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None  # the user the server runs as when we are root
    superuser_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    # Reserved URL characters, so URL quoting is exercised; never to appear in a log line.
    app_password: str = field(default_factory=lambda: "pw:/@?#" + secrets.token_urlsafe(16))
    ca_pem: str = ""
    client_cert_pem: str = ""
    client_key_pem: str = ""
    host: str = "127.0.0.1"
    _databases: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    # -- process control -------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as is not None:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def init(self) -> None:
        (self.root / "sock").mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        self._write_certs()
        self._chown()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile), "-E", "UTF8",
                  "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", timeout=120)
        pwfile.unlink()
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            f"hostssl all {CERT_ROLE} 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n"
            f"host all {CERT_ROLE} 127.0.0.1/32 reject\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
                f"ssl = on\nssl_cert_file = '{self.root / 'server.pem'}'\n"
                f"ssl_key_file = '{self.root / 'server-key.pem'}'\nssl_ca_file = '{self.root / 'ca.pem'}'\n"
                "log_min_messages = warning\nlog_connections = off\n"
            )
        self._chown()

    def _write_certs(self) -> None:
        now = dt.datetime.now(dt.UTC)
        ca, ca_key = new_ca("notes test CA", now=now, days=2)
        server, server_key = issue_leaf(ca_key, ca, "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                                        host_names(("localhost", "127.0.0.1")), now=now,
                                        lifetime=dt.timedelta(days=2))
        client, client_key = issue_leaf(ca_key, ca, CERT_ROLE, ExtendedKeyUsageOID.CLIENT_AUTH, [], now=now,
                                        lifetime=dt.timedelta(days=2))
        self.ca_pem, self.client_cert_pem, self.client_key_pem = _pem(ca), _pem(client), _key_pem(client_key)
        (self.root / "ca.pem").write_text(self.ca_pem)
        (self.root / "server.pem").write_text(_pem(server))
        key_file = self.root / "server-key.pem"
        key_file.write_text(_key_pem(server_key))
        key_file.chmod(0o600)

    def _chown(self) -> None:
        if self.run_as is None:
            return
        user = pwd.getpwnam(self.run_as)
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root / 'sock'}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", options, "start", timeout=90)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", timeout=90)

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    # -- databases -------------------------------------------------------------------------

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, user="postgres", password=self.superuser_password,
                               dbname=dbname, autocommit=True, sslmode="disable", connect_timeout=10)

    def create_roles(self) -> None:
        with self.admin() as conn:
            for role, password in ((APP_ROLE, self.app_password), (CERT_ROLE, self.app_password)):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)))

    def new_database(self, owner: str = APP_ROLE) -> str:
        """Create a fresh database owned by ``owner``; return its name."""
        self._databases += 1
        name = f"notes_{self._databases}_{secrets.token_hex(3)}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)))
        return name

    @property
    def ca_file(self) -> Path:
        """The test CA (PEM) that signed the server's certificate, readable by the tests."""
        return self.root / "ca.pem"

    def url(self, dbname: str, *, user: str = APP_ROLE, **params: str) -> str:
        """``postgresql://`` URL for ``dbname`` with the role's password (percent-encoded).

        TLS verified against the test CA unless ``params`` say otherwise, as the server requires.
        """
        defaults = {"sslmode": "verify-full", "sslrootcert": str(self.ca_file)}
        query = "&".join(f"{k}={v}" for k, v in {**defaults, **params}.items())
        return f"postgresql://{user}:{quote(self.app_password, safe='')}@{self.host}:{self.port}/{dbname}?{query}"


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throw-away cluster (installing the Debian package first when missing and root); stop it after.

    Raises:
        RuntimeError: no PostgreSQL binaries and no way to install them.
    """
    bin_dir = find_bin_dir() or _install_if_root()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL binaries not found (apt-get install postgresql, or run the tests as root)")
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            run_as = "nobody"
    root = Path(tempfile.mkdtemp(prefix="notes-pg-test-"))  # not under pytest's 0700 tmp: run_as must enter it
    server = PostgresServer(bin_dir=bin_dir, root=root, port=_free_port(), run_as=run_as)
    try:
        server.init()
        server.start()
        server.create_roles()
        yield server
    finally:
        try:
            if server.is_running():
                server.stop("fast")
        finally:
            shutil.rmtree(root, ignore_errors=True)
