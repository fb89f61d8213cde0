"""Benchmark: what the TLS-ALPN-01 set-up's extra hop costs on the data path. The same nginx
HTTPS server measured directly and through the stream server in front of it
(nginx/tls-alpn/stream.conf.template: ssl_preread, then a TCP splice with a PROXY line; TLS is
still terminated once, by the HTTPS server). Real nginx (Debian's, with libnginx-mod-stream),
loopback only. Prints a Markdown table.

    .venv/bin/python bench/tls_alpn_hop.py [--requests 300] [--mib 256]

Measured, alternating direct and through the hop to share the machine's noise:
- a new connection, TLS handshake and a small GET, per request (median and 95th percentile);
- one large download (GiB/s), the bytes spliced by the stream server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.stack import render_templates  # noqa: E402

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
NAME = "hop.test"
MAIN = """
load_module {module};
worker_processes 1;
daemon on;
pid {run}/nginx.pid;
error_log {run}/error.log;
events {{ worker_connections 1024; }}
include {run}/tls-alpn/stream.conf;
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    include {run}/tls-alpn/http-realip.conf;
    server {{
        listen 127.0.0.1:{direct} ssl;
        listen 127.0.0.1:{internal} ssl proxy_protocol;
        ssl_certificate {run}/cert.pem;
        ssl_certificate_key {run}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /small {{ return 200 "ok\\n"; }}
        location / {{ root {run}/www; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(run: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(key, hashes.SHA256()))
    (run / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (run / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))


def client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def get(port: int, path: str, ctx: ssl.SSLContext) -> int:
    """Bytes received for one GET on a new connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock, ctx.wrap_socket(sock, server_hostname=NAME) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        total = 0
        while chunk := tls.recv(1 << 20):
            total += len(chunk)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    if not STREAM_MODULE.exists():
        print("nginx's stream module is missing: run pebble-test/setup.sh (libnginx-mod-stream)", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    with tempfile.TemporaryDirectory(prefix="acmebox-bench-hop-") as tmp:
        run = Path(tmp)
        run.chmod(0o755)  # nginx's workers run as nobody when it is started as root
        (run / "www").mkdir()
        with (run / "www" / "big").open("wb") as f:
            f.truncate(args.mib << 20)
        self_signed(run)
        direct, internal, hop = free_port(), free_port(), free_port()
        render_templates(ROOT / "nginx" / "tls-alpn", run / "tls-alpn", {
            "NGINX_LISTEN_TLS": f"127.0.0.1:{hop}", "ACMEBOX_TLS_ALPN_UPSTREAM": f"127.0.0.1:{free_port()}",
            "NGINX_HTTPS_INTERNAL": f"127.0.0.1:{internal}", "NGINX_STREAM_LOG": "/dev/null",
            "NGINX_STREAM_FROM": "127.0.0.1",
        })
        conf = run / "nginx.conf"
        conf.write_text(MAIN.format(module=STREAM_MODULE, run=run, direct=direct, internal=internal))
        subprocess.run([nginx, "-c", str(conf), "-p", str(run)], check=True)
        try:
            ctx = client()
            for port in (direct, hop):  # warm up
                get(port, "/small", ctx)
            times: dict[int, list[float]] = {direct: [], hop: []}
            for _ in range(args.requests):
                for port in (direct, hop):
                    t = time.perf_counter()
                    get(port, "/small", ctx)
                    times[port].append((time.perf_counter() - t) * 1000)
            rates: dict[int, float] = {}
            for port in (direct, hop):
                t = time.perf_counter()
                got = get(port, "/big", ctx)
                if got < args.mib << 20:
                    raise SystemExit(f"the download on port {port} brought {got} bytes, not {args.mib} MiB")
                rates[port] = got / (time.perf_counter() - t) / (1 << 30)
        finally:
            subprocess.run([nginx, "-c", str(conf), "-p", str(run), "-s", "stop"], check=False)
    print(f"| path | new connection + TLS + small GET, median (ms) | p95 (ms) | {args.mib} MiB download (GiB/s) |")
    print("|---|---|---|---|")
    for label, port in (("direct to the HTTPS server", direct), ("through the stream hop", hop)):
        ms = sorted(times[port])
        p95 = ms[int(len(ms) * 0.95) - 1]
        print(f"| {label} | {statistics.median(ms):.2f} | {p95:.2f} | {rates[port]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
