#!/bin/sh
# Install Moorage and its test dependencies, then run the test suite as root.
# Extra arguments go to pytest, for example: contrib/run-tests.sh -m "not slow"
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
"$here/contrib/install.sh"
cd "$here"
exec "${MOORAGE_VENV:-/opt/moorage}/bin/python" -m pytest -q -p no:cacheprovider "$@" tests
