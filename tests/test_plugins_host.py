"""PluginHost in-process, with real pluggy plugins: call order, undo order and timeouts.

These run the host on its own event loop without moord, for the paths that
no built-in caller in this tree reaches yet (network setup and teardown).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest

from shim.protocol import StartFailed
from supervisor.config import DaemonConfig
from supervisor.hookspecs import hookimpl
from supervisor.pluginhost import PluginHost, PluginInfo


class Network:
    """Record setup and teardown calls in a shared list; setup raises or hangs as configured."""

    def __init__(self, name: str, calls: list, fail: bool = False, hang: bool = False):
        self.name = name
        self.calls = calls
        self.fail = fail
        self.hang = hang

    @hookimpl
    def moorage_network_setup(self, container_id, netns, network):
        self.calls.append(("setup", self.name, container_id, netns, network))
        if self.hang:
            threading.Event().wait(3600)
        if self.fail:
            raise OSError("no addresses left")
        return {"plugin": self.name}

    @hookimpl
    def moorage_network_teardown(self, container_id, netns, network):
        self.calls.append(("teardown", self.name))


async def make_host(plugins: list, timeout: float = 5.0) -> PluginHost:
    host = PluginHost(replace(DaemonConfig(), plugin_timeout=timeout))
    for plugin in plugins:
        await host.add(PluginInfo(plugin.name, "1", "test"), lambda plugin=plugin: plugin)
    return host


BRIDGE = {"name": "bridge", "driver": "bridge"}


def test_host_network_setup_last_registered_first():
    calls: list = []

    async def scenario():
        host = await make_host([Network("first", calls), Network("second", calls)])
        return await host.network_setup("c1", "/run/netns/c1", BRIDGE, {})

    results = asyncio.run(scenario())

    assert results == [("second", {"plugin": "second"}), ("first", {"plugin": "first"})]
    assert [call[1] for call in calls] == ["second", "first"]
    assert calls[0][2:] == ("c1", "/run/netns/c1", BRIDGE)


def test_host_network_failure_undoes_in_reverse():
    calls: list = []

    async def scenario():
        host = await make_host([Network("failing", calls, fail=True), Network("b", calls), Network("c", calls)])
        await host.network_setup("c2", "/run/netns/c2", BRIDGE, {})

    with pytest.raises(StartFailed) as error:
        asyncio.run(scenario())

    assert calls == [("setup", "c", "c2", "/run/netns/c2", BRIDGE), ("setup", "b", "c2", "/run/netns/c2", BRIDGE),
                     ("setup", "failing", "c2", "/run/netns/c2", BRIDGE), ("teardown", "b"), ("teardown", "c")]
    assert "plugin failing rejected it in moorage_network_setup" in error.value.message
    assert "no addresses left" in error.value.message
    assert error.value.status == 125


def test_host_network_setup_timeout_vetoes():
    calls: list = []

    async def scenario():
        host = await make_host([Network("ok", calls), Network("stuck", calls, hang=True)], timeout=0.5)
        await host.network_setup("c3", "/run/netns/c3", BRIDGE, {})

    with pytest.raises(StartFailed) as error:
        asyncio.run(scenario())

    assert "timed out after 0.5 s" in error.value.message
    assert [call[:2] for call in calls] == [("setup", "stuck")]


def test_host_network_teardown_every_plugin():
    calls: list = []

    async def scenario():
        host = await make_host([Network("a", calls), Network("b", calls)])
        await host.network_teardown("c4", "/run/netns/c4", BRIDGE)

    asyncio.run(scenario())

    assert calls == [("teardown", "a"), ("teardown", "b")]


def test_host_network_skips_plugin_of_other_driver():
    calls: list = []
    cni_only = Network("cni-only", calls)
    cni_only.network_drivers = ("cni",)

    async def scenario():
        host = await make_host([Network("any", calls), cni_only])
        return await host.network_setup("c5", "/run/netns/c5", BRIDGE, {})

    results = asyncio.run(scenario())

    assert [name for name, _ in results] == ["any"]
    assert [call[1] for call in calls] == ["any"]


class Metrics:
    def __init__(self, name: str, values: dict | None):
        self.name = name
        self.values = values

    @hookimpl
    def moorage_collect_metrics(self, container_id, cgroup_path, pid):
        if self.values is None:
            raise RuntimeError("cgroup file missing")
        return dict(self.values, pid=pid)


def test_host_metrics_merged_without_failing_plugin():
    async def scenario():
        host = await make_host([Metrics("cpu", {"cpu": 1.5, "shared": "cpu"}), Metrics("mem", {"memory": 42, "shared": "mem"}),
                                Metrics("broken", None)])
        return await host.collect_metrics("c5", "/moorage/c5", 77)

    merged = asyncio.run(scenario())

    assert merged == {"cpu": 1.5, "memory": 42, "shared": "cpu", "pid": 77}
