"""The ``cni`` network plugin: runs standard CNI plugins from a network configuration list.

It follows the CNI specification, versions 0.4.0 and 1.0.0.  Each plugin of
the list runs with ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``,
``CNI_IFNAME`` and ``CNI_PATH`` in its environment.  Its stdin is its own
configuration, with ``name`` and ``cniVersion`` from the list and, after the
first plugin, the previous plugin's result as ``prevResult``.  ADD goes through
the list in order, DEL in reverse.  The final ADD result is cached per
container, because DEL and CHECK need it as ``prevResult``.  Capabilities
that the list requests (``portMappings``) are passed as ``runtimeConfig``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from supervisor.hookspecs import hookimpl

IFNAME = "eth0"
PLUGIN_TIMEOUT = 60


class CniError(Exception):
    """A CNI plugin failed; the message has the plugin type and its error code and text."""


def conflists(folder: str | Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of every readable ``*.conflist`` in the folder, sorted by file name."""
    found = []
    folder = Path(folder)
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.conflist")):
        try:
            found.append((json.loads(path.read_text())["name"], path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def find_conflist(folder: str | Path, name: str) -> Path | None:
    for found_name, path in conflists(folder):
        if found_name == name:
            return path
    return None


class CniPlugin:
    """Implements the network hooks for networks whose driver is ``cni``."""

    network_drivers = ("cni",)

    def __init__(self, bin_dir: str | Path, cache_dir: str | Path):
        self.bin_dir = str(bin_dir)
        self.cache_dir = Path(cache_dir)

    @hookimpl
    def moorage_network_setup(self, container_id: str, netns: str, network: dict, options: dict) -> dict | None:
        if network.get("driver") != "cni":
            return None
        conflist = _load(network["conflist"])
        runtime = _runtime_config(options)
        self._save(container_id, {"conflist": conflist, "runtime": runtime, "result": None})
        result = None
        for plugin in conflist["plugins"]:
            result = self._run("ADD", container_id, netns, _plugin_config(conflist, plugin, result, runtime))
        self._save(container_id, {"conflist": conflist, "runtime": runtime, "result": result})
        return {"driver": "cni", "network": network["name"], "conflist": network["conflist"],
                "cni_result": result, "ip_address": _first_address(result), "interface": IFNAME}

    @hookimpl
    def moorage_network_teardown(self, container_id: str, netns: str, network: dict) -> None:
        if network.get("driver") != "cni":
            return
        cached = self._cached(container_id)
        if cached is None:
            if not Path(network["conflist"]).exists():
                return
            cached = {"conflist": _load(network["conflist"]), "runtime": {}, "result": None}
        netns = netns if netns and Path(netns).exists() else ""
        errors = []
        for plugin in reversed(cached["conflist"]["plugins"]):
            config = _plugin_config(cached["conflist"], plugin, cached["result"], cached["runtime"])
            try:
                self._run("DEL", container_id, netns, config)
            except CniError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        (self.cache_dir / f"{container_id}.json").unlink(missing_ok=True)

    @hookimpl
    def moorage_network_check(self, container_id: str, netns: str, network: dict) -> dict | None:
        if network.get("driver") != "cni":
            return None
        return self.check(container_id, netns)

    def check(self, container_id: str, netns: str) -> dict:
        """Run CHECK through the list with the cached result; raise CniError if a plugin objects.

        A list with ``disableCheck`` or a ``cniVersion`` before 0.4.0 is not
        checked, following the CNI specification.
        """
        cached = self._cached(container_id)
        if cached is None or cached["result"] is None:
            raise CniError(f"no CNI result is cached for container {container_id}: restart it to set it up again")
        conflist = cached["conflist"]
        if conflist.get("disableCheck"):
            return {"skipped": "the network list sets disableCheck"}
        if _version(conflist.get("cniVersion", "1.0.0")) < (0, 4, 0):
            return {"skipped": f"cniVersion {conflist.get('cniVersion')} has no CHECK (it needs 0.4.0 or later)"}
        for plugin in conflist["plugins"]:
            self._run("CHECK", container_id, netns, _plugin_config(conflist, plugin, cached["result"],
                                                                   cached["runtime"]))
        return {"plugins": [plugin["type"] for plugin in conflist["plugins"]]}

    # -- running one plugin ------------------------------------------------------------

    def _run(self, command: str, container_id: str, netns: str, config: dict) -> dict | None:
        kind = config["type"]
        binary = Path(self.bin_dir) / kind
        if not binary.is_file():
            raise CniError(f"CNI plugin {kind!r} was not found in {self.bin_dir}: install containernetworking-plugins")
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": IFNAME, "CNI_PATH": self.bin_dir, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin")}
        done = subprocess.run([str(binary)], input=json.dumps(config).encode(), env=env, capture_output=True,
                              timeout=PLUGIN_TIMEOUT)
        if done.returncode != 0:
            raise CniError(f"CNI plugin {kind} {command} failed: {_error_text(done.stdout, done.stderr)}")
        if command != "ADD":
            return None
        try:
            return json.loads(done.stdout)
        except ValueError:
            raise CniError(f"CNI plugin {kind} ADD printed no JSON result: {done.stdout[:200]!r}") from None

    def _save(self, container_id: str, data: dict) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.cache_dir / f"{container_id}.json"
        path.with_suffix(".tmp").write_text(json.dumps(data))
        path.with_suffix(".tmp").rename(path)

    def _cached(self, container_id: str) -> dict | None:
        try:
            return json.loads((self.cache_dir / f"{container_id}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None


def _load(path: str | Path) -> dict:
    try:
        conflist = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CniError(f"cannot read CNI network list {path}: {exc}") from None
    if not isinstance(conflist.get("plugins"), list) or not conflist["plugins"]:
        raise CniError(f"CNI network list {path} has no plugins")
    return conflist


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split("."))
    except ValueError:
        return (0,)


def _runtime_config(options: dict) -> dict:
    mappings = [{"hostPort": p["host_port"], "containerPort": p["container_port"], "protocol": p["proto"],
                 **({"hostIP": p["host_ip"]} if p["host_ip"] != "0.0.0.0" else {})}
                for p in options.get("ports") or []]
    return {"portMappings": mappings} if mappings else {}


def _plugin_config(conflist: dict, plugin: dict, previous: dict | None, runtime: dict) -> dict:
    config = dict(plugin, name=conflist["name"], cniVersion=conflist.get("cniVersion", "1.0.0"))
    if previous is not None:
        config["prevResult"] = previous
    wanted = {key: value for key, value in runtime.items() if plugin.get("capabilities", {}).get(key)}
    if wanted:
        config["runtimeConfig"] = wanted
    return config


def _first_address(result: dict | None) -> str:
    for ip in (result or {}).get("ips", []):
        return ip.get("address", "").split("/")[0]
    return ""


def _error_text(stdout: bytes, stderr: bytes) -> str:
    try:
        error = json.loads(stdout)
        return f"code {error.get('code')}: {error.get('msg')} {error.get('details', '')}".strip()
    except ValueError:
        return (stderr or stdout).decode(errors="replace").strip()[:500]
