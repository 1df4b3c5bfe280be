"""Pull and push against a real registry: Debian's docker-registry on 127.0.0.1, random port.

Each test starts its own registry with a config and storage under tmp_path and
stops it by PID.  HTTPS tests make a self-signed certificate for 127.0.0.1 with
openssl; the basic-auth tests make an htpasswd file with htpasswd(1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import wait_until
from shim.protocol import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from supervisor.images import ImageStore
from test_images import root, small_rootfs  # noqa: F401
from test_images_snapshots import two_images

REGISTRY = shutil.which("docker-registry")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="image tests need root"),
    pytest.mark.skipif(REGISTRY is None, reason="docker-registry is not installed "
                       "(contrib/install.sh installs it)"),
]
USER, PASSWORD = "tester", "s3cret-pass"


@dataclass
class Registry:
    host: str
    process: subprocess.Popen
    ca_file: Path | None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def start_registry(folder: Path, tls: bool = False, basic_auth: bool = False,
                   auth_lines: list[str] | None = None) -> Registry:
    """Start docker-registry; ``auth_lines`` is an ``auth:`` section of its YAML config, one string a line."""
    folder.mkdir(parents=True)
    port = free_port()
    lines = ["version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
             "storage:", "  filesystem:", f"    rootdirectory: {folder / 'storage'}",
             "  delete:", "    enabled: true",
             "http:", f"  addr: 127.0.0.1:{port}", "  secret: test-only-secret"]
    ca_file = None
    if tls:
        ca_file, key = make_certificate(folder)
        lines += ["  tls:", f"    certificate: {ca_file}", f"    key: {key}"]
    if basic_auth:
        htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                                  capture_output=True, timeout=30).stdout
        (folder / "htpasswd").write_bytes(htpasswd)
        lines += ["auth:", "  htpasswd:", "    realm: moorage-test",
                  f"    path: {folder / 'htpasswd'}"]
    lines += auth_lines or []
    (folder / "config.yml").write_text("\n".join(lines) + "\n")

    log = open(folder / "registry.log", "wb")
    process = subprocess.Popen([REGISTRY, "serve", str(folder / "config.yml")], stdout=log,
                               stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    registry = Registry(f"127.0.0.1:{port}", process, ca_file)

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited; see {folder / 'registry.log'}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(answers, 30, message="docker-registry to listen")
    return registry


@pytest.fixture
def registry(tmp_path: Path):
    started = start_registry(tmp_path / "registry")
    yield started
    started.stop()


@pytest.fixture
def tls_registry(tmp_path: Path):
    started = start_registry(tmp_path / "registry", tls=True, basic_auth=True)
    yield started
    started.stop()


@pytest.fixture
def store(root: Path):
    yield ImageStore(root, root / "moorage.db", "overlayfs")
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        target = line.split()[4]
        if target.startswith(str(root.parent) + "/"):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)


def pushed_image(store: ImageStore, tmp_path: Path, registry: Registry, name: str = "team/app:1",
                 **options) -> tuple[str, str]:
    """Import a two-layer image, tag it for the registry and push it; return (ref, digest)."""
    store.import_archive(two_images(tmp_path, runnable=True))
    ref = f"{registry.host}/{name}"
    store.tag("one:latest", ref)
    digest = store.push(ref, **options)
    return ref, digest


def login(store: ImageStore, registry: Registry) -> None:
    from supervisor.images.registry import store_credentials
    store_credentials(store.auth_file, registry.host, USER, PASSWORD)


# Plain HTTP.

def test_push_pull_roundtrip(store: ImageStore, tmp_path: Path, registry: Registry):
    ref, digest = pushed_image(store, tmp_path, registry, insecure=True)
    original = store.get(ref)
    store.remove(ref)
    store.remove("one")
    store.remove("two")

    pulled = store.pull(ref, insecure=True)

    assert pulled.name == ref
    assert pulled.id == original.id
    assert pulled.manifest_digest == digest
    assert pulled.snapshot == original.snapshot


def test_pull_by_digest(store: ImageStore, tmp_path: Path, registry: Registry):
    ref, digest = pushed_image(store, tmp_path, registry, insecure=True)
    by_digest = f"{registry.host}/team/app@{digest}"

    pulled = store.pull(by_digest, insecure=True)

    assert pulled.name == by_digest
    assert store.get(by_digest).manifest_digest == digest


def test_pull_unknown_tag(store: ImageStore, registry: Registry):
    with pytest.raises(NotFound, match="404"):
        store.pull(f"{registry.host}/team/missing:1", insecure=True)


def test_pull_https_from_http_registry(store: ImageStore, registry: Registry):
    with pytest.raises(Unavailable, match="--insecure-registry"):
        store.pull(f"{registry.host}/team/app:1")


def test_pull_resumes_partial_download(store: ImageStore, tmp_path: Path, registry: Registry):
    ref, _ = pushed_image(store, tmp_path, registry, insecure=True)
    image = store.get(ref)
    layer = json.loads(store._content.read(image.manifest_digest))["layers"][0]["digest"]
    data = store._content.path(layer).read_bytes()
    for name in (ref, "one", "two"):
        store.remove(name)
    partial = store._content.ingest_dir / (layer.removeprefix("sha256:") + ".partial")
    partial.write_bytes(data[:len(data) // 2])

    store.pull(ref, insecure=True)

    assert store._content.path(layer).read_bytes() == data
    assert not partial.exists()


def test_pull_rejects_corrupt_partial(store: ImageStore, tmp_path: Path, registry: Registry):
    ref, _ = pushed_image(store, tmp_path, registry, insecure=True)
    image = store.get(ref)
    layer = json.loads(store._content.read(image.manifest_digest))["layers"][0]["digest"]
    for name in (ref, "one", "two"):
        store.remove(name)
    partial = store._content.ingest_dir / (layer.removeprefix("sha256:") + ".partial")
    partial.write_bytes(b"not the layer at all")

    with pytest.raises(InvalidArgument, match="corrupt"):
        store.pull(ref, insecure=True)

    assert store.list() == []
    assert not partial.exists()


def test_pull_picks_platform_from_index(store: ImageStore, tmp_path: Path, registry: Registry):
    ref, digest = pushed_image(store, tmp_path, registry, insecure=True)
    manifest = store._content.read(digest)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [
                 {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                  "size": len(manifest), "platform": {"os": "linux", "architecture": "s390x"}}]}
    request = urllib.request.Request(
        f"http://{registry.host}/v2/team/app/manifests/multi", method="PUT",
        data=json.dumps(index).encode(),
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    urllib.request.urlopen(request, timeout=30).close()

    pulled = store.pull(f"{registry.host}/team/app:multi", platform="linux/s390x", insecure=True)

    assert pulled.manifest_digest == digest
    with pytest.raises(FailedPrecondition, match="linux/arm64"):
        store.pull(f"{registry.host}/team/app:multi", platform="linux/arm64", insecure=True)


# HTTPS with basic auth.

def test_https_push_pull_with_login(store: ImageStore, tmp_path: Path, tls_registry: Registry):
    login(store, tls_registry)
    ref, digest = pushed_image(store, tmp_path, tls_registry, ca_file=tls_registry.ca_file)
    store.remove(ref)

    pulled = store.pull(ref, ca_file=tls_registry.ca_file)

    assert pulled.manifest_digest == digest


def test_https_ca_from_certs_folder(store: ImageStore, tmp_path: Path, tls_registry: Registry,
                                    root: Path):
    login(store, tls_registry)
    certs = root / "certs.d" / tls_registry.host
    certs.mkdir(parents=True)
    shutil.copy(tls_registry.ca_file, certs / "ca.crt")

    ref, digest = pushed_image(store, tmp_path, tls_registry)

    assert store.get(ref).manifest_digest == digest


def test_https_unknown_ca_rejected(store: ImageStore, tls_registry: Registry):
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        store.pull(f"{tls_registry.host}/team/app:1")


def test_push_without_login_rejected(store: ImageStore, tmp_path: Path, tls_registry: Registry):
    with pytest.raises(FailedPrecondition, match="moor login"):
        pushed_image(store, tmp_path, tls_registry, ca_file=tls_registry.ca_file)


def test_wrong_password_rejected(store: ImageStore, tmp_path: Path, tls_registry: Registry):
    from supervisor.images.registry import store_credentials
    store_credentials(store.auth_file, tls_registry.host, USER, "wrong")

    with pytest.raises(FailedPrecondition, match="credentials|moor login"):
        pushed_image(store, tmp_path, tls_registry, ca_file=tls_registry.ca_file)


def test_credentials_file_mode_checked(store: ImageStore, tmp_path: Path, tls_registry: Registry):
    login(store, tls_registry)
    os.chmod(store.auth_file, 0o644)

    with pytest.raises(FailedPrecondition, match="chmod 600"):
        store.pull(f"{tls_registry.host}/team/app:1", ca_file=tls_registry.ca_file)


# Through moord and the CLI.

def test_moor_push_pull_run(moord, tmp_path: Path, registry: Registry):
    moord.moor("image", "import", str(two_images(tmp_path, runnable=True)))
    ref = f"{registry.host}/team/cli:1"
    moord.moor("tag", "one", ref)
    pushed = moord.moor("push", "--insecure-registry", ref)
    moord.moor("image", "rm", ref)
    moord.moor("image", "rm", "one")

    pulled = moord.moor("pull", "--insecure-registry", ref)
    run = moord.moor("run", "--rm", ref, "sh", "-c", "cat /etc/one")

    assert pushed.stdout.decode().split()[-1].startswith("sha256:")
    assert pulled.stdout.decode().splitlines()[-1].startswith(ref + " sha256:")
    assert "downloading" in pulled.stdout.decode() or "exists" in pulled.stdout.decode()
    assert run.stdout == b"one"


def test_moor_login_writes_private_file(moord, tls_registry: Registry):
    result = moord.moor("login", "-u", USER, "--password-stdin", tls_registry.host,
                        input=PASSWORD.encode() + b"\n")

    auth_file = moord.root / "auth.json"
    assert result.returncode == 0
    assert stat.S_IMODE(os.stat(auth_file).st_mode) == 0o600
    assert tls_registry.host in json.loads(auth_file.read_text())["auths"]
    assert PASSWORD not in (moord.root.parent / "moord.out").read_text(errors="replace")


# Insecure registries from moord's config file and flags.

def push_and_pull_without_flag(daemon, tmp_path: Path, registry: Registry, name: str) -> tuple:
    daemon.moor("image", "import", str(two_images(tmp_path, runnable=True)))
    ref = f"{registry.host}/team/{name}:1"
    daemon.moor("tag", "one", ref)
    pushed = daemon.moor("push", "-q", ref)
    daemon.moor("image", "rm", ref)
    daemon.moor("image", "rm", "one")
    pulled = daemon.moor("pull", "-q", ref)
    return pushed, pulled, ref


def test_config_insecure_registry_used_without_flag(moord_factory, tmp_path: Path, registry: Registry):
    config = tmp_path / "config.toml"
    config.write_text(f'[registries]\ninsecure = ["{registry.host}"]\n')
    daemon = moord_factory("--config", str(config))

    pushed, pulled, ref = push_and_pull_without_flag(daemon, tmp_path, registry, "from-config")

    assert pushed.stdout.decode().split()[-1].startswith("sha256:")
    assert pulled.stdout.decode().startswith(ref + " sha256:")


def test_moord_flag_insecure_registry(moord_factory, tmp_path: Path, registry: Registry):
    daemon = moord_factory("--insecure-registry", registry.host)

    _, pulled, ref = push_and_pull_without_flag(daemon, tmp_path, registry, "from-flag")

    assert pulled.stdout.decode().startswith(ref + " sha256:")


def test_registry_not_listed_stays_https(moord_factory, tmp_path: Path, registry: Registry):
    config = tmp_path / "config.toml"
    config.write_text('[registries]\ninsecure = ["127.0.0.1:1"]\n')
    daemon = moord_factory("--config", str(config))

    result = daemon.moor("pull", "-q", f"{registry.host}/team/app:1", check=False)

    assert result.returncode != 0
    assert b"--insecure-registry" in result.stderr


@pytest.mark.parametrize("text, message", [
    ('[registries]\ninsecure = ["http://127.0.0.1:5000"]\n', "invalid insecure registry 'http://127.0.0.1:5000'"),
    ('[registries]\ninsecure = ["127.0.0.1:5000/team"]\n', "invalid insecure registry '127.0.0.1:5000/team'"),
    ('[registries]\ninsecure = "127.0.0.1:5000"\n', "expected a list"),
    ('[registries]\nmirrors = ["x"]\n', "unknown setting(s) mirrors in [registries]"),
], ids=["scheme", "path", "not-a-list", "unknown-key"])
def test_config_registries_rejected(tmp_path: Path, text: str, message: str):
    from supervisor import config as daemon_config
    config = tmp_path / "config.toml"
    config.write_text(text)

    with pytest.raises(InvalidArgument) as caught:
        daemon_config.load(config, {})

    assert message in caught.value.message


def test_config_registries_with_moord_table(tmp_path: Path):
    from supervisor import config as daemon_config
    config = tmp_path / "config.toml"
    config.write_text('[moord]\nsnapshotter = "copy"\n\n[registries]\ninsecure = ["localhost:5000", "[::1]:5001"]\n')

    loaded = daemon_config.load(config, {})

    assert loaded.insecure_registries == ("localhost:5000", "[::1]:5001")
    assert loaded.snapshotter == "copy"
