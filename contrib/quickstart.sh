#!/bin/sh
# Install Moorage, start moord in the background, and run a service container
# from the built-in busybox image: it prints a line a second.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
"$here/contrib/install.sh"

state=${MOORAGE_STATE:-/run/moorage}
# The commands that install.sh just installed, whatever else is earlier on PATH.
PATH="${MOORAGE_VENV:-/opt/moorage}/bin:$PATH"
export PATH
if ! moor --state "$state" version >/dev/null 2>&1; then
    echo "quickstart: starting moord (log: /var/lib/moorage/moord.log)"
    setsid moord --state "$state" </dev/null >/dev/null 2>&1 &
    for _ in $(seq 100); do
        moor --state "$state" version >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

moor --state "$state" image default
moor --state "$state" rm -f ticker >/dev/null 2>&1 || true
moor --state "$state" run -d --name ticker --restart unless-stopped busybox \
    sh -c 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 1; done'
sleep 3
moor --state "$state" ps
moor --state "$state" logs --tail 3 ticker
