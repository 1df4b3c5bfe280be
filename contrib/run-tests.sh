#!/bin/sh
# Install Moorage and its test dependencies, then run the test suite as root.
# Extra arguments go to pytest, for example: contrib/run-tests.sh -m "not slow"
# The slow tests use a Debian root with redis-server, built here (downloading
# Debian packages) into /var/tmp/moorage-test-cache unless MOORAGE_NO_DEBIAN=1.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
"$here/contrib/install.sh"
if [ "${MOORAGE_NO_DEBIAN:-0}" != 1 ]; then
    mkdir -p /var/tmp/moorage-test-cache
    "$here/contrib/debian-redis-rootfs.sh" /var/tmp/moorage-test-cache/debian-redis-rootfs
fi
cd "$here"
exec "${MOORAGE_VENV:-/opt/moorage}/bin/python" -m pytest -q -p no:cacheprovider "$@" tests
