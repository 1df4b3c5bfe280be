"""Bearer-token authentication against a real registry and a token server made by the test.

docker-registry runs with ``auth: token:``.  It rejects requests without a token
with a 401 and a ``Bearer realm=...,service=...,scope=...`` challenge, and it accepts
only JWTs that are signed (RS256) by the key of the certificate in its
``rootcertbundle``.  The token server is a standard-library HTTP server on
127.0.0.1.  It checks basic credentials and signs each token with
``openssl dgst -sha256 -sign``.  The token carries the certificate in its
``x5c`` header, so the registry can check the signature against that bundle.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shim.protocol import FailedPrecondition
from supervisor.images import ImageStore
from supervisor.images.registry import store_credentials
from test_images import root  # noqa: F401
from test_registry import Registry, make_certificate, pushed_image, start_registry, store  # noqa: F401

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="image tests need root"),
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry is not installed "
                       "(contrib/install.sh installs it)"),
]
USER, PASSWORD = "token-user", "token-pass"
SERVICE, ISSUER = "moorage-test-registry", "moorage-test-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A token server: GET /token with basic credentials returns a signed JWT for the requested scopes."""

    def __init__(self, cert: Path, key: Path):
        self.key = key
        self.cert_der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server looks up)
                server.handle(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(url.query)
        self.requests.append({"path": url.path, "service": query.get("service", []),
                              "scope": query.get("scope", []),
                              "authorized": "Authorization" in request.headers})
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if url.path != "/token" or request.headers.get("Authorization") != expected:
            request.send_response(401)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return

        body = json.dumps({"token": self.sign(query.get("scope", [])), "expires_in": 300}).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def sign(self, scopes: list[str]) -> str:
        """Return a JWT that grants every requested action (RS256, certificate in the x5c header)."""
        access = []
        for scope in scopes:
            kind, name_and_actions = scope.split(":", 1)
            name, _, actions = name_and_actions.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "iat": now, "nbf": now - 60,
                  "exp": now + 300, "jti": os.urandom(8).hex(), "access": access}
        signed = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signed.encode(),
                                   check=True, capture_output=True, timeout=30).stdout
        return signed + "." + _b64url(signature)


@pytest.fixture
def token_registry(tmp_path: Path):
    """A plain HTTP registry that accepts only tokens of the test's token server."""
    keys = tmp_path / "token-keys"
    keys.mkdir()
    cert, key = make_certificate(keys)
    tokens = TokenServer(cert, key)
    auth = ["auth:", "  token:", f"    realm: {tokens.realm}", f"    service: {SERVICE}",
            f"    issuer: {ISSUER}", f"    rootcertbundle: {cert}"]
    try:
        registry = start_registry(tmp_path / "registry", auth_lines=auth)
    except BaseException:
        tokens.stop()
        raise
    yield registry, tokens
    registry.stop()
    tokens.stop()


def test_token_push_pull_roundtrip(store: ImageStore, tmp_path: Path, token_registry):
    registry, _ = token_registry
    store_credentials(store.auth_file, registry.host, USER, PASSWORD)
    ref, digest = pushed_image(store, tmp_path, registry, insecure=True)
    store.remove(ref)

    pulled = store.pull(ref, insecure=True)

    assert pulled.manifest_digest == digest


def test_token_request_names_service_and_scope(store: ImageStore, tmp_path: Path, token_registry):
    registry, tokens = token_registry
    store_credentials(store.auth_file, registry.host, USER, PASSWORD)

    pushed_image(store, tmp_path, registry, name="team/scoped:1", insecure=True)

    assert tokens.requests
    assert all(request["service"] == [SERVICE] for request in tokens.requests)
    assert all(request["authorized"] for request in tokens.requests)
    # The registry's challenges may name the actions in either order, and in separate requests.
    asked = [set(scope.rpartition(":")[2].split(",")) for request in tokens.requests for scope in request["scope"]
             if scope.startswith("repository:team/scoped:")]
    assert {"pull", "push"} <= set().union(*asked), asked


def test_token_wrong_password_rejected(store: ImageStore, tmp_path: Path, token_registry):
    registry, _ = token_registry
    store_credentials(store.auth_file, registry.host, USER, "wrong")

    with pytest.raises(FailedPrecondition, match="token server"):
        pushed_image(store, tmp_path, registry, insecure=True)


def test_token_without_login_rejected(store: ImageStore, tmp_path: Path, token_registry):
    registry, tokens = token_registry

    with pytest.raises(FailedPrecondition, match="token server"):
        pushed_image(store, tmp_path, registry, insecure=True)
    assert not any(request["authorized"] for request in tokens.requests)


def test_token_registry_rejects_unsigned_request(token_registry):
    registry, _ = token_registry

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://{registry.host}/v2/", timeout=30)

    assert caught.value.code == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer ")


def test_token_signed_by_other_key_rejected(store: ImageStore, tmp_path: Path, token_registry):
    registry, tokens = token_registry
    store_credentials(store.auth_file, registry.host, USER, PASSWORD)
    other = tmp_path / "other-key"
    other.mkdir()
    _, tokens.key = make_certificate(other)

    with pytest.raises(FailedPrecondition, match="failed with 401"):
        pushed_image(store, tmp_path, registry, insecure=True)
