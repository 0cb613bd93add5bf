"""The real nginx in front of a test server, running the shipped deploy/nginx files.

The shipped files name production values (upstream 127.0.0.1:8000, ports 80/443, paths
under /etc and /var/log). `render` replaces each with a test value as a plain string
substitution and fails if one is no longer in the files, so the shipped files and this
list cannot drift apart silently. A test can pass extra substitutions (e.g. a short
`proxy_read_timeout`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.binaries import missing
from tests.support.ports import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "nginx"
SITE = "graphgate.conf"
SNIPPETS = ("graphgate-proxy.conf", "graphgate-sse.conf", "graphgate-log.conf",
            "graphgate-limit-req.conf")
SERVER_NAME = "graphgate.example.com"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        missing("nginx")
    assert found is not None
    return found


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for SERVER_NAME and 127.0.0.1 (fullchain.pem, privkey.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
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


def substitutions(prefix: Path, upstream: str, http_port: int, https_port: int) -> dict[str, str]:
    """Shipped literal -> test value. Each literal must occur in the shipped files."""
    return {
        "server 127.0.0.1:8000;": f"server {upstream};",
        "listen [::]:80;": "",
        "listen [::]:443 ssl http2;": "",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "/etc/ssl/graphgate/": f"{prefix}/certs/",
        "/etc/nginx/snippets/": f"{prefix}/snippets/",
        "/var/log/nginx/": f"{prefix}/logs/",
    }


def render(prefix: Path, subs: Mapping[str, str]) -> Path:
    """Copy the shipped site and snippets under `prefix` with `subs` applied; return the
    generated top-level nginx.conf that includes the site inside `http { }`."""
    sources = {SITE: SHIPPED / SITE, **{n: SHIPPED / "snippets" / n for n in SNIPPETS}}
    texts = {name: path.read_text() for name, path in sources.items()}
    for old, new in subs.items():
        hits = sum(text.count(old) for text in texts.values())
        assert hits, f"{old!r} no longer occurs in deploy/nginx: update tests/support/nginx.py"
        texts = {name: text.replace(old, new) for name, text in texts.items()}
    (prefix / "snippets").mkdir(parents=True, exist_ok=True)
    (prefix / "sites").mkdir(exist_ok=True)
    for name, text in texts.items():
        target = prefix / ("sites" if name == SITE else "snippets") / name
        target.write_text(text)
    for sub in ("logs", "spool"):
        (prefix / sub).mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    # As root the workers run as `nobody`: the master opens logs and certificates, and
    # creates (and hands over) the spool/* directories itself.
    conf.write_text(f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    access_log {prefix}/logs/default-access.log;
    client_body_temp_path {prefix}/spool/client;
    proxy_temp_path {prefix}/spool/proxy;
    fastcgi_temp_path {prefix}/spool/fastcgi;
    uwsgi_temp_path {prefix}/spool/uwsgi;
    scgi_temp_path {prefix}/spool/scgi;
    include {prefix}/sites/{SITE};
}}
""")
    return conf


class Nginx:
    """nginx (foreground, `daemon off`) serving the shipped site in front of `upstream`."""

    def __init__(self, upstream: str, extra: Mapping[str, str] | None = None) -> None:
        self.binary = nginx_binary()
        # Not under pytest's 0700 tmp dirs: the `nobody` workers must reach spool/.
        self.prefix = Path(tempfile.mkdtemp(prefix="graphgate-nginx-"))
        self.prefix.chmod(0o755)
        self.http_port, self.https_port = free_port(), free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.url = f"https://127.0.0.1:{self.https_port}"
        self.cert, _ = write_self_signed(self.prefix / "certs")
        subs = substitutions(self.prefix, upstream, self.http_port, self.https_port)
        self.conf = render(self.prefix, {**subs, **(extra or {})})
        self.proc: subprocess.Popen[bytes] | None = None

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf),
                "-e", str(self.prefix / "logs" / "error.log"), *args]

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def test_config(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the rendered files (output on stderr)."""
        return subprocess.run(self._cmd("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> Nginx:
        checked = self.test_config()
        assert checked.returncode == 0, checked.stderr
        self.proc = subprocess.Popen(self._cmd("-g", "daemon off;"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.https_port, timeout_s=10)
            wait_for_port(self.http_port, timeout_s=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.error_log()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful; open streams are closed
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def error_log(self) -> str:
        return "".join(path.read_text(errors="replace")
                       for path in sorted((self.prefix / "logs").glob("*error.log")))

    def access_lines(self) -> list[dict[str, Any]]:
        path = self.prefix / "logs" / "graphgate.access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_access_line(self, timeout_s: float = 5) -> list[dict[str, Any]]:
        """The access log once it has a line (nginx writes it just after the response)."""
        deadline = time.monotonic() + timeout_s
        while not (lines := self.access_lines()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return lines
