"""Network setup through the plugin host: its timeout, and the undo of a setup that another plugin vetoes.

A test plugin, installed on moord's PYTHONPATH, runs after the built-in
bridge plugin (trylast).  It hangs or raises for containers whose name starts
with "hang" or "veto", after the bridge plugin has made the veth and leased
an address.
"""

from __future__ import annotations

import json

import pytest

from netfixture import NetEnv
from test_plugins_helpers import install_plugin, start_with_plugins

TIMEOUT = 2   # moord's plugin_timeout in these tests, in seconds

VETO = '''
    import time
    from supervisor.hookspecs import hookimpl

    class Plugin:
        @hookimpl(trylast=True)
        def moorage_network_setup(self, container_id, netns, network, options):
            if options["name"].startswith("hang"):
                time.sleep(20)   # longer than moord waits: the call times out
            if options["name"].startswith("veto"):
                raise RuntimeError("vetoed by the test plugin")
            return None
'''


@pytest.fixture
def vetoenv(moord_factory, tmp_path):
    site = tmp_path / "site"
    install_plugin(site, "netveto", VETO)

    def make(*args: str):
        return start_with_plugins(moord_factory, site, "", "--plugin-timeout", str(TIMEOUT), *args)

    env = NetEnv(make, tmp_path)
    yield env
    env.cleanup()


def start(env, name: str):
    return env.moord.moor("run", "-d", "--name", name, "busybox", "sleep", "60", check=False)


def leases(env) -> list:
    return json.loads(env.moord.moor("network", "inspect", "bridge").stdout)[0]["leases"]


def test_setup_timeout_fails_start(vetoenv):
    result = start(vetoenv, "hang1")
    assert result.returncode == 125
    assert f"failed to set up network bridge for container hang1: plugin netveto timed out after {TIMEOUT} s".encode() \
        in result.stderr


def test_plugin_veto_fails_start_with_its_message(vetoenv):
    result = start(vetoenv, "veto1")
    assert result.returncode == 125
    assert b"failed to set up network bridge for container veto1: vetoed by the test plugin" in result.stderr


@pytest.mark.parametrize("name", ["hang2", "veto2"], ids=["timeout", "veto"])
def test_failed_setup_leaves_no_veth(vetoenv, name):
    start(vetoenv, name)
    assert vetoenv.links(vetoenv.default_bridge) == []


@pytest.mark.parametrize("name", ["hang3", "veto3"], ids=["timeout", "veto"])
def test_failed_setup_leaves_no_lease(vetoenv, name):
    start(vetoenv, name)
    assert leases(vetoenv) == []


@pytest.mark.parametrize("name", ["hang4", "veto4"], ids=["timeout", "veto"])
def test_failed_setup_leaves_no_namespace(vetoenv, name):
    start(vetoenv, name)
    assert vetoenv.netns_files() == []


def test_other_containers_start_after_a_veto(vetoenv):
    start(vetoenv, "veto5")
    result = start(vetoenv, "fine")
    assert result.returncode == 0
    assert len(vetoenv.links(vetoenv.default_bridge)) == 1
