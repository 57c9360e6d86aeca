"""Test helpers for OIDC push tokens: a local Google-style certificates endpoint and a minter.

Real RS256 tokens are signed with a throwaway key whose self-signed certificate is served
in Google's v1 format (``{kid: PEM certificate}``) by an HTTP server on 127.0.0.1, so
verification runs google-auth's real code, certificate fetching and caching included.

Fixtures: load them with ``pytest_plugins = ["tests.oidc"]`` in a test module or in
``tests/conftest.py``. (Importing the fixtures by name trips ruff's F811; importing anything
from this module before pytest loads it as a plugin makes pytest warn that it cannot rewrite
it, so tests reach everything through the fixtures.)

``oidc_server`` (session)
    The running :class:`CertServer`, started once, holding ``key`` (whose certificate it
    serves under ``KID``) and ``other_key`` (never served). ``server.url(path)`` gives a URL;
    ``CERTS_PATH`` serves the certificates with ``Cache-Control: public, max-age=3600``,
    ``NO_STORE_PATH`` serves them with ``Cache-Control: no-store``, ``JWKS_PATH`` serves an
    empty JWK set, other paths answer 404. The paths are also attributes of the server.

``oidc`` (function)
    Points ``TASKS_OIDC_CERTS_URL`` at ``CERTS_PATH`` (through pytest-django's ``settings``)
    and resets the verifier's certificate cache, before and after the test.

    - ``oidc.token(**claims) -> str``: a valid token. Keyword arguments replace claims;
      pass ``OMIT`` (also ``oidc.OMIT``) to leave a claim out. Defaults: ``iss``
      ``https://accounts.google.com``, ``aud`` = ``tasks_settings.TASKS_OIDC_AUDIENCE``,
      ``email`` = ``tasks_settings.TASKS_SERVICE_ACCOUNT``, ``email_verified`` True,
      ``sub`` "1234567890", ``iat`` now, ``exp`` now + 3600. Settings are read when the token is
      minted, so mint before changing them if the token should match the old values.
    - ``oidc.header(**claims) -> str``: ``"Bearer " + oidc.token(**claims)``.
    - ``oidc.other_key_token(**claims) -> str``: the same claims and ``kid``, signed by a
      different key, so the signature does not verify.
    - ``oidc.claims(**claims) -> dict``: the payload ``token()`` would sign.
    - ``oidc.hits -> int``: requests the certificate server has answered since the fixture
      started (any path).
    - ``oidc.server``, ``oidc.certs_url``, ``oidc.kid``.
"""

import datetime
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from gyrinx_tasks.auth import reset_verifier
from gyrinx_tasks.conf import tasks_settings

CERTS_PATH = "/oauth2/v1/certs"
NO_STORE_PATH = "/no-store/certs"
JWKS_PATH = "/oauth2/v3/certs"
KID = "gyrinx-test-key"
OMIT = object()
"""Pass as a claim's value to ``oidc.token()`` to leave that claim out."""


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    cert_pem: str

    @classmethod
    def generate(cls, common_name: str) -> "KeyPair":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(key, hashes.SHA256())
        )
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(private_pem, cert.public_bytes(serialization.Encoding.PEM).decode())

    def sign(self, claims: dict[str, Any], kid: str = KID) -> str:
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=kid)
        return jwt.encode(signer, claims).decode()


class CertServer:
    """Serves certificates on 127.0.0.1 in a background thread and counts requests."""

    CERTS_PATH = CERTS_PATH
    NO_STORE_PATH = NO_STORE_PATH
    JWKS_PATH = JWKS_PATH

    def __init__(self, key: KeyPair, other_key: KeyPair) -> None:
        # Only ``key``'s certificate is served; ``other_key`` signs tokens that must fail.
        self.key = key
        self.other_key = other_key
        self._body = json.dumps({KID: key.cert_pem}).encode()
        self._lock = threading.Lock()
        self._hits = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _respond(self, path: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self._hits += 1
        json_type = {"Content-Type": "application/json; charset=UTF-8"}
        if path == CERTS_PATH:
            return 200, {**json_type, "Cache-Control": "public, max-age=3600"}, self._body
        if path == NO_STORE_PATH:
            return 200, {**json_type, "Cache-Control": "no-store"}, self._body
        if path == JWKS_PATH:
            return 200, {**json_type, "Cache-Control": "no-store"}, b'{"keys": []}'
        return 404, {"Content-Type": "text/plain"}, b"not found"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                status, headers, body = server._respond(self.path)
                self.send_response(status)  # also sends Date, which caching needs
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output quiet

        return Handler


@dataclass
class OIDC:
    """What the ``oidc`` fixture gives a test; see the module docstring."""

    server: CertServer
    kid: str = KID
    OMIT: object = OMIT
    _baseline: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._baseline = self.server.hits

    @property
    def certs_url(self) -> str:
        return self.server.url(CERTS_PATH)

    @property
    def hits(self) -> int:
        return self.server.hits - self._baseline

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": tasks_settings.TASKS_OIDC_AUDIENCE,
            "email": tasks_settings.TASKS_SERVICE_ACCOUNT,
            "email_verified": True,
            "sub": "1234567890",
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not OMIT}

    def token(self, **overrides: Any) -> str:
        return self.server.key.sign(self.claims(**overrides), self.kid)

    def header(self, **overrides: Any) -> str:
        return f"Bearer {self.token(**overrides)}"

    def other_key_token(self, **overrides: Any) -> str:
        return self.server.other_key.sign(self.claims(**overrides), self.kid)


@pytest.fixture(scope="session")
def oidc_server() -> Iterator[CertServer]:
    server = CertServer(
        KeyPair.generate("gyrinx-tasks-test"), KeyPair.generate("gyrinx-tasks-impostor")
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def oidc(oidc_server: CertServer, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[OIDC]:
    settings.TASKS_OIDC_CERTS_URL = oidc_server.url(CERTS_PATH)
    # requests would send 127.0.0.1 through an HTTP(S)_PROXY from the environment.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    reset_verifier()
    yield OIDC(oidc_server)
    reset_verifier()
