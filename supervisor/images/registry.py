"""Registry client for the OCI distribution spec: manifests and blobs over HTTP(S).

Pull downloads blobs into the content store, several at a time, each verified
against its digest and size while written.  An interrupted download keeps its
partial file, and the next attempt requests the rest with a Range request.
Credentials come from a JSON file shaped like docker's ``config.json``
(``{"auths": {"HOST[:PORT]": {"auth": base64("USER:PASSWORD")}}}``), which must
not be readable by other users; they are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import ssl
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shim.protocol import FailedPrecondition, InvalidArgument, MoorError, NotFound, Unavailable

from . import _oci
from ._content import ContentStore, check_digest, fsync_dir
from ._reference import DEFAULT_TAG, parse_reference

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = "registry-1.docker.io"
_CHUNK = 1 << 20
_ATTEMPTS = 3
_MANIFEST_ACCEPT = ", ".join([_oci.MEDIA_INDEX, _oci.MEDIA_MANIFEST, _oci.MEDIA_DOCKER_LIST,
                              _oci.MEDIA_DOCKER_MANIFEST])
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')

Progress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class RemoteRef:
    """A parsed remote reference: registry host, repository path, and a tag or a digest."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def local_name(self) -> str:
        """Return the local image name: ``HOST/REPO:TAG``, or ``HOST/REPO@DIGEST``."""
        base = f"{self.registry}/{self.repository}"
        return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag or DEFAULT_TAG}"


def parse_remote(ref: str) -> RemoteRef:
    """Split ``[HOST[:PORT]/]REPO[:TAG][@DIGEST]``; a first part with '.' or ':' is the host."""
    name, _, digest = ref.partition("@")
    if digest:
        check_digest(digest, f"reference {ref!r}")
    repository, tag = parse_reference(name)
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, repository
        if "/" not in path:
            path = f"library/{path}"
    return RemoteRef(registry, path, tag, digest or None)


def load_credentials(path: Path, registry: str) -> tuple[str, str] | None:
    """Return (user, password) for a registry from the credentials file, or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise FailedPrecondition(
            f"credentials file {path} can be read by other users (mode "
            f"{stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`")
    try:
        auths = json.loads(path.read_text()).get("auths", {})
        encoded = auths.get(registry, {}).get("auth")
    except (ValueError, AttributeError) as error:
        raise InvalidArgument(f"credentials file {path} is not valid JSON with an auths "
                              f"object: {error}") from error
    if not encoded:
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError as error:
        raise InvalidArgument(f"credentials for {registry} in {path} are not base64 "
                              f"USER:PASSWORD") from error
    return user, password


def store_credentials(path: Path, registry: str, user: str, password: str) -> None:
    """Add or replace a registry's credentials, writing the file with mode 0600 atomically."""
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        document = {}
    document.setdefault("auths", {})[registry] = {
        "auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(temp, 0o600)
    os.rename(temp, path)
    fsync_dir(path.parent)


class RegistryClient:
    """HTTP(S) access to one registry, with basic or bearer-token authentication."""

    def __init__(self, registry: str, insecure: bool = False, ca_file: Path | None = None,
                 credentials: tuple[str, str] | None = None):
        self.registry = registry
        self._base = f"{'http' if insecure else 'https'}://{registry}"
        self._credentials = credentials
        self._tokens: dict[str, str] = {}
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        handlers = [urllib.request.HTTPSHandler(context=context), _NoRedirectAuthStrip()]
        self._opener = urllib.request.build_opener(*handlers)

    # Requests.

    def request(self, method: str, url: str, scope: str, headers: dict | None = None,
                data=None, expect: tuple[int, ...] = (200,)):
        """Send a request, authenticating once on a 401; return the open response."""
        if not url.startswith("http"):
            url = self._base + url
        headers = dict(headers or {})
        for attempt in range(2):
            auth = self._auth_header(scope)
            if auth:
                headers["Authorization"] = auth
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                response = self._opener.open(request, timeout=60)
            except urllib.error.HTTPError as error:
                if error.code == 401 and attempt == 0:
                    self._authenticate(error.headers.get("WWW-Authenticate", ""), scope)
                    error.close()
                    continue
                raise self._error(error, method, url) from None
            except (urllib.error.URLError, OSError) as error:
                raise Unavailable(f"cannot reach registry {self.registry} ({method} {url}): "
                                  f"{getattr(error, 'reason', error)}; check the address, and "
                                  "use --insecure-registry for a plain HTTP one") from None
            if response.status not in expect:
                response.close()
                raise MoorError(f"registry {self.registry} returned status {response.status} for "
                                f"{method} {url}")
            return response
        raise FailedPrecondition(
            f"registry {self.registry} rejected the credentials for {scope}; log in again "
            "with `moor login`")

    def _error(self, error: urllib.error.HTTPError, method: str, url: str) -> MoorError:
        body = error.read(4096).decode(errors="replace")
        error.close()
        text = f"registry {self.registry}: {method} {url} failed with {error.code}: {body.strip()}"
        if error.code == 404:
            return NotFound(text)
        if error.code in (401, 403):
            return FailedPrecondition(text + "; log in with `moor login`")
        return MoorError(text)

    def _auth_header(self, scope: str) -> str | None:
        if scope in self._tokens:
            return self._tokens[scope]
        return None

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_RE.findall(params_text))
        if scheme.lower() == "basic":
            if self._credentials is None:
                raise FailedPrecondition(f"registry {self.registry} needs a login; run "
                                         f"`moor login {self.registry}`")
            user, password = self._credentials
            encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._tokens[scope] = f"Basic {encoded}"
            return
        if scheme.lower() != "bearer" or "realm" not in params:
            raise MoorError(f"registry {self.registry} requires an unsupported authentication "
                            f"scheme {scheme!r}")

        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        url = params["realm"] + "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        headers = {}
        if self._credentials is not None:
            user, password = self._credentials
            encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {encoded}"
        try:
            with self._opener.open(urllib.request.Request(url, headers=headers), timeout=60) as answer:
                document = json.loads(answer.read())
        except urllib.error.HTTPError as error:
            raise FailedPrecondition(f"token server of {self.registry} rejected the request "
                                     f"({error.code}); check the login") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise Unavailable(f"cannot get a token for {self.registry}: {error}") from None
        token = document.get("token") or document.get("access_token")
        if not token:
            raise MoorError(f"token server of {self.registry} returned no token")
        self._tokens[scope] = f"Bearer {token}"

    # Manifests.

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """Return (body, media type, digest) of a manifest or index; a digest is verified."""
        scope = f"repository:{repository}:pull"
        with self.request("GET", f"/v2/{repository}/manifests/{reference}", scope,
                          {"Accept": _MANIFEST_ACCEPT}) as response:
            body = response.read(_oci.MAX_DOCUMENT_BYTES + 1)
            media_type = response.headers.get("Content-Type", "").split(";")[0]
        if len(body) > _oci.MAX_DOCUMENT_BYTES:
            raise InvalidArgument(f"manifest {repository}:{reference} is larger than "
                                  f"{_oci.MAX_DOCUMENT_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise InvalidArgument(f"registry {self.registry} sent manifest {digest} for "
                                  f"{repository}@{reference}; the registry or its storage is "
                                  "corrupt")
        document = _oci.parse_json(body, f"manifest {repository}:{reference}")
        return body, document.get("mediaType") or media_type, digest

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> None:
        scope = f"repository:{repository}:pull,push"
        self.request("PUT", f"/v2/{repository}/manifests/{tag}", scope,
                     {"Content-Type": media_type}, body, expect=(201, 200)).close()

    # Blobs.

    def download_blob(self, repository: str, descriptor: _oci.Descriptor, content: ContentStore,
                      progress: Progress | None = None) -> bool:
        """Download a blob into the store unless present; return whether it is new.

        A partial file from an earlier attempt is continued with a Range request.
        """
        if content.exists(descriptor.digest):
            if progress:
                progress(descriptor.digest, descriptor.size, descriptor.size, "exists")
            return False
        partial = content.ingest_dir / (descriptor.digest.removeprefix("sha256:") + ".partial")
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                self._download(repository, descriptor, partial, progress)
                break
            except (OSError, Unavailable, urllib.error.URLError) as error:
                if attempt == _ATTEMPTS:
                    raise Unavailable(f"downloading {descriptor.digest} from {self.registry} "
                                      f"failed {attempt} times: {error}") from None
                log.warning("download of %s from %s failed (%s); resuming, attempt %d",
                            descriptor.digest, self.registry, error, attempt + 1)
        return content.commit_file(partial, descriptor.digest, descriptor.size,
                                   f"registry {self.registry}")

    def _download(self, repository: str, descriptor: _oci.Descriptor, partial: Path,
                  progress: Progress | None) -> None:
        done = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={done}-"} if done else {}
        if done >= descriptor.size:
            return
        scope = f"repository:{repository}:pull"
        response = self.request("GET", f"/v2/{repository}/blobs/{descriptor.digest}", scope,
                                headers, expect=(200, 206))
        with response, open(partial, "ab" if response.status == 206 else "wb") as out:
            done = done if response.status == 206 else 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if done > descriptor.size:
                    raise InvalidArgument(f"blob {descriptor.digest} from {self.registry} is "
                                          f"larger than its descriptor's {descriptor.size} bytes")
                if progress:
                    progress(descriptor.digest, done, descriptor.size, "downloading")
            out.flush()
            os.fsync(out.fileno())

    def blob_exists(self, repository: str, digest: str) -> bool:
        scope = f"repository:{repository}:pull,push"
        try:
            self.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope).close()
            return True
        except NotFound:
            return False

    def upload_blob(self, repository: str, digest: str, path: Path,
                    progress: Progress | None = None) -> None:
        """Upload a blob in one PUT after starting an upload session, unless already there."""
        size = path.stat().st_size
        if self.blob_exists(repository, digest):
            if progress:
                progress(digest, size, size, "exists")
            return
        scope = f"repository:{repository}:pull,push"
        with self.request("POST", f"/v2/{repository}/blobs/uploads/", scope, data=b"",
                          expect=(202,)) as response:
            location = response.headers["Location"]
        if location.startswith("/"):
            location = self._base + location
        separator = "&" if "?" in location else "?"
        with open(path, "rb") as source:
            self.request("PUT", f"{location}{separator}digest={digest}", scope,
                         {"Content-Type": "application/octet-stream",
                          "Content-Length": str(size)}, source, expect=(201,)).close()
        if progress:
            progress(digest, size, size, "pushed")


class _NoRedirectAuthStrip(urllib.request.HTTPRedirectHandler):
    """Follow redirects of blob downloads without sending the registry's credentials on."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(
                req.full_url).netloc:
            new.remove_header("Authorization")
        return new
