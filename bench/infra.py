"""Throwaway Redis, PostgreSQL and nginx on free loopback ports, for the benchmark.

Small bench-side versions of tests/support/{redis,postgres,nginx}.py: those import pytest
(to skip when a binary is missing), and the harness must run without it. nginx runs the
shipped deploy/nginx files with the same literal substitutions the tests make.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
from pathlib import Path

# Plain socket helpers with no pytest in them, shared with the test suite.
from tests.support.ports import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
NGINX_SHIPPED = REPO / "deploy" / "nginx"
NGINX_SNIPPETS = ("graphgate-proxy.conf", "graphgate-sse.conf", "graphgate-log.conf",
                  "graphgate-limit-req.conf")
SERVER_NAME = "graphgate.example.com"


class Unavailable(Exception):
    """A binary the row needs is not installed; the row is skipped with this note."""


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout_s: float = 15.0) -> None:
    """Stop one process we started, by its pid: `sig`, then SIGKILL after `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Redis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="graphgate-bench-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, 10)

    def close(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise Unavailable(f"PostgreSQL ({name}) is not installed")
    return found


class Postgres:
    """initdb + pg_ctl as the `postgres` user when root. Durable settings (fsync on), as
    a production server would run: the row measures graphgate on a real database."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.dir = tempfile.mkdtemp(prefix="graphgate-bench-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C.UTF-8")
        self._run(self.pg_ctl, "-D", self.data, "-l", os.path.join(self.dir, "log"), "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=200",
                  "-w", "-t", "30", "start")

    def _run(self, *cmd: str) -> None:
        argv = ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=60)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class Nginx:
    """The shipped site (TLS, HTTP/2, edge limits, SSE locations) in front of `upstream`."""

    def __init__(self, upstream_port: int) -> None:
        binary = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
            None)
        if binary is None:
            raise Unavailable("nginx is not installed")
        self.prefix = Path(tempfile.mkdtemp(prefix="graphgate-bench-nginx-"))
        self.prefix.chmod(0o755)  # the `nobody` workers must reach spool/
        self.https_port = free_port()
        self.cert, _ = _self_signed(self.prefix / "certs")
        subs = {
            "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
            "listen [::]:80;": "",
            "listen [::]:443 ssl http2;": "",
            "listen 80;": f"listen 127.0.0.1:{free_port()};",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{self.https_port} ssl http2;",
            "/etc/ssl/graphgate/": f"{self.prefix}/certs/",
            "/etc/nginx/snippets/": f"{self.prefix}/snippets/",
            "/var/log/nginx/": f"{self.prefix}/logs/",
        }
        sources = {"graphgate.conf": NGINX_SHIPPED / "graphgate.conf",
                   **{n: NGINX_SHIPPED / "snippets" / n for n in NGINX_SNIPPETS}}
        texts = {name: path.read_text() for name, path in sources.items()}
        for old, new in subs.items():
            if not any(old in text for text in texts.values()):
                raise RuntimeError(f"{old!r} is no longer in deploy/nginx: update bench/infra.py")
            texts = {name: text.replace(old, new) for name, text in texts.items()}
        for sub in ("snippets", "sites", "logs", "spool"):
            (self.prefix / sub).mkdir(exist_ok=True)
        for name, text in texts.items():
            folder = "sites" if name == "graphgate.conf" else "snippets"
            (self.prefix / folder / name).write_text(text)
        p = self.prefix
        self.conf = p / "nginx.conf"
        self.conf.write_text(f"""\
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    access_log {p}/logs/default-access.log;
    client_body_temp_path {p}/spool/client;
    proxy_temp_path {p}/spool/proxy;
    fastcgi_temp_path {p}/spool/fastcgi;
    uwsgi_temp_path {p}/spool/uwsgi;
    scgi_temp_path {p}/spool/scgi;
    include {p}/sites/graphgate.conf;
}}
""")
        argv = [binary, "-p", str(p), "-c", str(self.conf), "-e", str(p / "logs" / "error.log")]
        checked = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        self.proc = subprocess.Popen([*argv, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.https_port, 10)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cert))
        context.set_alpn_protocols(["http/1.1"])
        return context

    def close(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)
        shutil.rmtree(self.prefix, ignore_errors=True)
