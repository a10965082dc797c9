"""Real local HTTP(S) servers for the outbound-HTTP tests (webhooks, URL inputs): a CA and a server
certificate made in the test with ``cryptography``, and a threaded server that records each request.

And the loopback-only network namespace: a test module that names any non-loopback address (SSRF
checks, webhook targets, URL inputs) marks itself ``pytestmark = LOOPBACK_ONLY`` and defines
``test_in_loopback_only_namespace = namespace_launcher(__file__)``. Outside the namespace its tests are
skipped and the launcher runs the module again with pytest under ``unshare -n`` (``-rn`` when not root)
after ``ip link set lo up``: no route but 127.0.0.0/8 and ::1, so nothing can leave the machine even
while a check is wrong. Every test of the module must pass there (only the launcher itself skips).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import sys
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from testkit import REQUIRE_TOOLS, tool_missing


@dataclass
class TlsFiles:
    ca: Path  # the CA certificate a client trusts (QALIGN_OUTBOUND_CA_BUNDLE)
    cert: Path
    key: Path


def make_tls_files(directory: Path, names: tuple[str, ...] = ("hook.test",)) -> TlsFiles:
    """A throwaway CA and a server certificate for ``names`` (DNS) and 127.0.0.1, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qalign test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class LocalServer:
    """A threaded HTTP or HTTPS server on 127.0.0.1; ``respond(seen)`` builds each answer (or writes
    it itself through the handler, for slow or endless bodies) and every request is kept in ``seen``."""

    def __init__(
        self, respond: Callable[[Seen, BaseHTTPRequestHandler], Reply | None], tls: TlsFiles | None = None
    ):
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                outer.seen.append(seen)
                reply = respond(seen, self)
                if reply is None:  # the responder wrote the answer itself
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = _handle  # noqa: N815 - http.server API

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host: str = "127.0.0.1", path: str = "/", scheme: str | None = None) -> str:
        scheme = scheme or ("https" if isinstance(self.server.socket, ssl.SSLSocket) else "http")
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def pinned_resolver(table: dict[str, list[str]]):
    """A resolver answering from ``table`` (names the tests invent), counting the look-ups."""
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise OSError(f"{host}: Name or service not known")
        return table[host]

    resolver.calls = calls  # type: ignore[attr-defined]
    return resolver


#: Set (to "1") in the environment of the pytest process started inside the namespace.
IN_NETNS = os.environ.get("QALIGN_IN_NETNS") == "1"
#: The module mark: its tests run only inside the namespace (tests/conftest.py skips them outside).
LOOPBACK_ONLY = pytest.mark.loopback_only


def _unshare_command() -> list[str] | str:
    """``unshare -n`` (root) or ``unshare -rn`` (an unprivileged user namespace), or why neither works."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) are needed for the network namespace"
    command = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    probe = subprocess.run([*command, "ip", "link", "set", "lo", "up"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"network namespaces are not allowed here ({' '.join(command)}): {probe.stderr.decode()[:200]}"
    return command


def namespace_launcher(test_file: str):
    """The test that runs every other test of ``test_file`` with pytest inside a loopback-only network
    namespace and requires them all to pass there."""

    @pytest.mark.loopback_launcher
    @pytest.mark.timeout(1500)
    def test_in_loopback_only_namespace(tmp_path):
        if IN_NETNS:
            pytest.skip("already inside the namespace")
        command = _unshare_command()
        if isinstance(command, str):
            tool_missing(command, REQUIRE_TOOLS)
        report = tmp_path / "inside.xml"
        script = (
            f'ip link set lo up && exec "{sys.executable}" -m pytest -q -p no:cacheprovider '
            f'--junitxml="{report}" "{test_file}"'
        )
        done = subprocess.run(
            [*command, "sh", "-c", script],
            env={**os.environ, "QALIGN_IN_NETNS": "1"},
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=1400,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-6000:]
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        assert suite is not None, output[-2000:]
        skipped = [case.get("name") for case in suite.iter("testcase") if case.find("skipped") is not None]
        counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors")}
        assert counts["failures"] == counts["errors"] == 0, output[-6000:]
        assert skipped == ["test_in_loopback_only_namespace"], f"skipped inside: {skipped}\n{output[-2000:]}"
        assert counts["tests"] > 1, output[-2000:]

    return test_in_loopback_only_namespace
