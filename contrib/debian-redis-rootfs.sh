#!/bin/sh
# Make a minimal Debian bookworm root folder with redis-server installed, for
# `moor image import-rootfs`.  No image registry is involved: debootstrap
# fetches the packages from the Debian mirror that this machine's apt uses.
#
# Usage: contrib/debian-redis-rootfs.sh FOLDER
#
# The root is built in FOLDER.partial and renamed to FOLDER only when it is
# complete, so FOLDER is either missing, empty or a finished root.  Running
# the script again on a finished root does nothing, which makes it safe to
# use as a cache.  A FOLDER.partial left by a failed run is removed and the
# build starts over.
#
# Needs root (debootstrap and chroot do), and installs debootstrap with
# apt-get if it is missing.
#
# NOTE: the root gets packages from the bookworm suite only, without the
# bookworm-security updates, so it is meant for tests and demos.

set -eu

SUITE=bookworm
PACKAGE=redis-server

die() {
    echo "debian-redis-rootfs: $*" >&2
    exit 1
}

say() {
    echo "debian-redis-rootfs: $*" >&2
}

# Print the URI of the first enabled "deb" source for $SUITE, reading the
# one-line format (*.list) and the deb822 format (*.sources) that apt reads.
find_mirror() {
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] || continue
        uri=$(awk -v suite="$SUITE" '
            $1 != "deb" { next }
            {
                field = 2
                if ($2 ~ /^\[/) {
                    while (field <= NF && $field !~ /\]$/) field++
                    field++
                }
                if ($(field + 1) == suite) { print $field; exit }
            }' "$file")
        if [ -n "$uri" ]; then
            echo "$uri"
            return 0
        fi
    done

    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        uri=$(awk -v suite="$SUITE" '
            function check() {
                if (found) return
                if (types ~ /(^| )deb( |$)/ && suites ~ ("(^| )" suite "( |$)") && enabled != "no" && uris != "") {
                    split(uris, list, " ")
                    print list[1]
                    found = 1
                    exit
                }
                types = ""; suites = ""; uris = ""; enabled = ""
            }
            /^#/ { next }
            /^[ \t]*$/ { check(); next }
            {
                value = $0
                sub(/^[^:]*:[ \t]*/, "", value)
                key = tolower($1)
                if (key == "types:") types = value
                else if (key == "suites:") suites = value
                else if (key == "uris:") uris = value
                else if (key == "enabled:") enabled = tolower(value)
            }
            END { check() }' "$file")
        if [ -n "$uri" ]; then
            echo "$uri"
            return 0
        fi
    done
    return 1
}

ensure_debootstrap() {
    if command -v debootstrap >/dev/null 2>&1; then
        return 0
    fi
    say "debootstrap is not installed; installing it with apt-get"
    apt-get update -q || die "apt-get update failed, so debootstrap cannot be installed; install it by hand"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap \
        || die "apt-get install debootstrap failed; install it by hand"
}

# Run a command inside the root with a clean environment.
in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C DEBIAN_FRONTEND=noninteractive \
        chroot "$PARTIAL" "$@"
}

install_package() {
    # Keep package scripts from starting redis-server in the chroot, because
    # invoke-rc.d starts no service while policy-rc.d exits with code 101.
    printf '#!/bin/sh\nexit 101\n' > "$PARTIAL/usr/sbin/policy-rc.d"
    chmod 755 "$PARTIAL/usr/sbin/policy-rc.d"

    in_root apt-get update -q || die "apt-get update inside $PARTIAL failed; check that the mirror $MIRROR is reachable"
    in_root apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "$PACKAGE" \
        || die "apt-get install $PACKAGE inside $PARTIAL failed"

    rm -f "$PARTIAL/usr/sbin/policy-rc.d"
}

clean_up() {
    in_root apt-get clean || die "apt-get clean inside $PARTIAL failed"
    rm -rf "$PARTIAL"/var/lib/apt/lists/*
    mkdir -p "$PARTIAL/var/lib/apt/lists/partial"

    # debootstrap copies this machine's DNS settings and host name into the
    # root, and apt-get above needs the DNS settings; keep neither in the image.
    : > "$PARTIAL/etc/resolv.conf"
    rm -f "$PARTIAL/etc/hostname"
}

# -- checks -------------------------------------------------------------------

[ $# -eq 1 ] || die "usage: $0 FOLDER (the root folder to make; its parent must exist)"
[ -n "$1" ] || die "FOLDER is an empty string; pass the path of the root folder to make"
[ "$(id -u)" -eq 0 ] || die "must run as root, because debootstrap and chroot need root"

TARGET=${1%/}
PARTIAL="$TARGET.partial"
PARENT=$(dirname "$TARGET")
[ -d "$PARENT" ] || die "parent folder $PARENT does not exist; create it first"

if [ -x "$TARGET/usr/bin/$PACKAGE" ]; then
    say "$TARGET already contains a finished root with $PACKAGE; nothing to do"
    exit 0
fi
if [ -e "$TARGET" ] && { [ ! -d "$TARGET" ] || [ -n "$(ls -A "$TARGET")" ]; }; then
    die "$TARGET exists and is not an empty folder or a root made by this script; remove it or pick another path"
fi

MIRROR=$(find_mirror) || die "no enabled 'deb' source for suite $SUITE in /etc/apt/sources.list or /etc/apt/sources.list.d/; add the Debian mirror there"

# -- build --------------------------------------------------------------------

ensure_debootstrap

if [ -e "$PARTIAL" ]; then
    say "removing $PARTIAL, left by an earlier run that did not finish"
    rm -rf --one-file-system "$PARTIAL" || die "cannot remove $PARTIAL; remove it by hand"
fi

say "running debootstrap --variant=minbase $SUITE into $PARTIAL from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$PARTIAL" "$MIRROR" \
    || die "debootstrap failed; see $PARTIAL/debootstrap/debootstrap.log (the next run removes $PARTIAL)"

say "installing $PACKAGE"
install_package
clean_up

if [ -d "$TARGET" ]; then
    rmdir "$TARGET" || die "cannot replace the empty folder $TARGET"
fi
mv "$PARTIAL" "$TARGET" || die "cannot rename $PARTIAL to $TARGET"
say "done: $TARGET contains a Debian $SUITE root with $PACKAGE"
