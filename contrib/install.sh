#!/bin/sh
# Install what Moorage needs on Debian or Ubuntu, as root: runc, busybox-static,
# nftables and iptables (published ports), containernetworking-plugins (the cni network type),
# a virtual environment at $MOORAGE_VENV (default /opt/moorage) holding this
# checkout, and links to moor, moord and moor-shim in /usr/local/bin.
# Run it again at any time; it only adds what is missing.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${MOORAGE_VENV:-/opt/moorage}

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (containers need root here)" >&2
    exit 1
fi

missing=""
command -v runc >/dev/null 2>&1 || missing="$missing runc"
[ -x /usr/bin/tini-static ] || missing="$missing tini"    # the init of `moor run --init`
[ -x /bin/busybox ] && ldd /bin/busybox >/dev/null 2>&1 && missing="$missing busybox-static"
[ -x /bin/busybox ] || missing="$missing busybox-static"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
# Images: zstd layers, and a local registry with htpasswd and openssl for the registry tests.
command -v zstd >/dev/null 2>&1 || missing="$missing zstd"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v htpasswd >/dev/null 2>&1 || missing="$missing apache2-utils"
[ -x /usr/bin/docker-registry ] || missing="$missing docker-registry"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
# For contrib/events-consumer/moor-events.c and its test: a C compiler, libzmq and msgpack-c.
command -v cc >/dev/null 2>&1 || missing="$missing gcc"
command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
[ -f /usr/include/zmq.h ] || missing="$missing libzmq3-dev"
[ -f /usr/include/msgpack.h ] || missing="$missing libmsgpack-dev"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
[ -x /usr/lib/cni/bridge ] || missing="$missing containernetworking-plugins"
if [ -n "$missing" ]; then
    echo "install.sh: installing$missing with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# The tests start their own registries on random loopback ports; the package's
# service would hold port 5000 for nothing.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "install.sh: creating the virtual environment $venv"
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "$here[test]"

for command in moor moord moor-shim; do
    ln -sf "$venv/bin/$command" "/usr/local/bin/$command"
done
echo "install.sh: moor, moord and moor-shim are in /usr/local/bin (from $venv)"
