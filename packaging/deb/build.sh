#!/usr/bin/env bash
# Build the cybernetic-edge Debian package (`make deb`): a self-contained virtual environment
# in /opt/cybernetic-edge, the systemd units, the gateway's broker configuration and default
# configuration in /etc/cybernetic (conffiles), and maintainer scripts.
#
# The venv is made with Debian's interpreter (/usr/bin/python3, what the package depends on)
# *at its final path*: a private mount namespace puts the staging folder over /opt, so every
# shebang and recorded path is /opt/cybernetic-edge and nothing needs rewriting. Root gets a
# plain mount namespace; anyone else a user namespace mapped to root.
#
# A venv runs on the Python minor version it was made with (lib/python3.X, compiled
# extensions for it), so the package depends on exactly that one, computed here from the
# building interpreter (python-depends.sh): built on Debian 12 it says python3 (>= 3.11),
# python3 (<< 3.12), built on Debian 13 python3 (>= 3.13), python3 (<< 3.14). Build on the
# release you install on (docs/install.md, "1. Build the package").
#
# The package carries the program, not a development environment: no pip or setuptools, no
# activate scripts, no console scripts of the dependencies; only bin/cybernetic and the
# interpreter links. The documentation (docs/*.md) and examples/ go to
# /usr/share/doc/cybernetic-edge, where the shipped configuration points.
#
# Environment, all optional:
#   DEB_VERSION    package version (default: the version in pyproject.toml, in Debian syntax)
#   READER_SCHEMA  newest state schema this build reads (default: STATE_SCHEMA from
#                  amcp.runtime.statemarker, the module that writes the state marker; 0 with a
#                  warning while there is none). Written into preinst, which refuses to
#                  install over state this build cannot read (see debian/preinst).
#   BUILD_DIR      work folder (default: build/deb). The venv in it is reused while the
#                  sources, the interpreter and the pinned versions are unchanged.
#   OUT_DIR        where the .deb is written (default: dist)
#   TARGET_PYTHON  interpreter for the venv (default: /usr/bin/python3)
#   DEB_COMPRESSION  dpkg-deb -Z: gzip (default), xz (smaller, slower) or none (tests)
# Prints the path of the built package on stdout; progress goes to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/packaging/deb
BUILD_DIR=$(realpath -m "${BUILD_DIR:-$REPO/build/deb}")
OUT_DIR=$(realpath -m "${OUT_DIR:-$REPO/dist}")
TARGET_PYTHON=${TARGET_PYTHON:-/usr/bin/python3}
PREFIX=/opt/cybernetic-edge
STAGE=$BUILD_DIR/root

say() { echo "build.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# -- what the build needs from the system -----------------------------------------------------
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg-dev)"
command -v unshare >/dev/null || die "unshare not found (apt-get install util-linux)"
[ -x "$TARGET_PYTHON" ] || die "$TARGET_PYTHON not found (apt-get install python3)"
PYTHON_DEPENDS=$(sh "$HERE/python-depends.sh" "$TARGET_PYTHON") \
    || die "$TARGET_PYTHON cannot carry the package (see above)"
PYTHON_MINOR=$("$TARGET_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$TARGET_PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$TARGET_PYTHON cannot make virtual environments (apt-get install python3-venv)"
[ -d /opt ] || die "/opt does not exist on this machine (the venv is built over it)"

ARCH=$(dpkg --print-architecture)
PY_VERSION=$("$TARGET_PYTHON" -c \
    'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
# PEP 440 pre-releases sort before the release; in Debian that is a tilde: 1.0rc1 -> 1.0~rc1.
DEB_VERSION=${DEB_VERSION:-$(echo "$PY_VERSION" | sed -E 's/\.?(a|b|rc|dev)([0-9]+)/~\1\2/g')}
mkdir -p "$BUILD_DIR" "$OUT_DIR"

# -- the virtual environment ------------------------------------------------------------------
# Pin to what the project's dev venv runs (the versions the tests passed with), when it exists.
CONSTRAINTS=$BUILD_DIR/constraints.txt
if [ -x "$REPO/.venv/bin/python" ]; then
    "$REPO/.venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check \
        | grep -v '^-e ' > "$CONSTRAINTS" || true
else
    : > "$CONSTRAINTS"
fi

source_stamp() {
    {
        "$TARGET_PYTHON" --version
        sha256sum "$CONSTRAINTS" "$REPO/pyproject.toml" "$REPO/README.md" "$HERE/build.sh"
        (cd "$REPO" && find amcp wasm firmware_bridge gateway cloud cybernetic packaging/mosquitto \
            -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 2>/dev/null \
            | sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -d' ' -f1
}

STAMP=$(source_stamp)
if [ -f "$STAGE$PREFIX/.build-stamp" ] && [ "$(cat "$STAGE$PREFIX/.build-stamp")" = "$STAMP" ]; then
    say "reusing the venv in $STAGE$PREFIX (sources unchanged)"
else
    say "building the venv at $PREFIX (staged in $STAGE)"
    rm -rf "$STAGE"
    mkdir -p "$STAGE$PREFIX"
    if [ "$(id -u)" -eq 0 ]; then
        # Only /opt/cybernetic-edge is covered, so the rest of /opt (local wheel mirrors named
        # in pip's configuration, say) stays visible. Its mount point is made if missing.
        NS=(unshare --mount --propagation private)
        MOUNT_AT=$PREFIX
        if [ ! -e "$PREFIX" ]; then
            mkdir "$PREFIX"
            trap 'rmdir "$PREFIX" 2>/dev/null || true' EXIT
        fi
    else
        # Without root only a user namespace is possible, where /opt/cybernetic-edge cannot be
        # created: the staging folder covers all of /opt.
        NS=(unshare --user --map-root-user --mount --propagation private)
        MOUNT_AT=/opt
    fi
    # shellcheck disable=SC2016 # expanded by the inner shell, from its arguments
    "${NS[@]}" /bin/sh -eu -c '
        stage=$1 python=$2 prefix=$3 constraints=$4 repo=$5 at=$6
        mount --bind "$stage$at" "$at"
        "$python" -m venv "$prefix"
        "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-warn-script-location -c "$constraints" "$repo"
        # an application runtime, not a development environment: pip and setuptools are 40%
        # of the files and nothing imports them
        "$prefix/bin/python" -m pip uninstall --quiet --yes pip setuptools
    ' sh "$STAGE" "$TARGET_PYTHON" "$PREFIX" "$CONSTRAINTS" "$REPO" "$MOUNT_AT" >&2
    echo "$STAMP" > "$STAGE$PREFIX/.build-stamp"
fi

# Only the program's command and the interpreter links stay in bin/: the venv's activate
# scripts (Activate.ps1 among them) and the dependencies' console scripts (httpx, idna, ...)
# are for developers, and nothing the daemons run calls them.
find "$STAGE$PREFIX/bin" -mindepth 1 -maxdepth 1 \
    ! -name cybernetic ! -name python ! -name python3 ! -name "python$PYTHON_MINOR" \
    -exec rm -f {} +
[ -x "$STAGE$PREFIX/bin/cybernetic" ] || die "the venv has no bin/cybernetic"

# The venv's interpreter is a symlink to /usr/bin/python3: it runs from the staging folder too.
STAGED_PY=$STAGE$PREFIX/bin/python
if [ -z "${READER_SCHEMA:-}" ]; then
    READER_SCHEMA=$("$STAGED_PY" -c '
import sys
try:
    from amcp.runtime.statemarker import STATE_SCHEMA
except ImportError:
    print("build.sh: warning: amcp.runtime.statemarker.STATE_SCHEMA not found;"
          " declaring reader schema 0 (refuses any state with a marker)", file=sys.stderr)
    STATE_SCHEMA = 0
print(int(STATE_SCHEMA))')
fi
case "$READER_SCHEMA" in ''|*[!0-9]*) die "READER_SCHEMA must be a number, got '$READER_SCHEMA'";; esac

# -- the rest of the tree ---------------------------------------------------------------------
rm -rf "${STAGE:?}/etc" "${STAGE:?}/lib" "${STAGE:?}/usr" "${STAGE:?}/DEBIAN"
install -D -m 0644 "$REPO/systemd/cybernetic-gateway.service" \
    "$STAGE/lib/systemd/system/cybernetic-gateway.service"
install -D -m 0644 "$REPO/systemd/cybernetic-cloud.service" \
    "$STAGE/lib/systemd/system/cybernetic-cloud.service"
install -D -m 0644 "$REPO/systemd/mosquitto.service.d/cybernetic.conf" \
    "$STAGE/lib/systemd/system/mosquitto.service.d/cybernetic.conf"

install -D -m 0644 "$HERE/etc/gateway.toml" "$STAGE/etc/cybernetic/gateway.toml"
install -D -m 0644 "$HERE/etc/cloud.toml" "$STAGE/etc/cybernetic/cloud.toml"
install -D -m 0644 "$REPO/packaging/mosquitto/acl" "$STAGE/etc/cybernetic/mosquitto/acl"
# The broker configuration is the one the demo and the tests run, rendered for the device.
"$STAGED_PY" - "$REPO" "$STAGE/etc/cybernetic/mosquitto.conf" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])  # render from the source tree: the same template the tests use
from cybernetic.mosquitto import TlsListener, render_config

TLS = Path("/etc/cybernetic/mosquitto/tls")  # made by postinst: `cybernetic devices tls`
Path(sys.argv[2]).write_text(
    render_config(
        port=1883,
        bind="127.0.0.1",  # plain MQTT for the gateway's services on this host only
        state_dir=Path("/var/lib/mosquitto"),
        # the service listener's accounts (the gateway's): made by postinst
        password_file=Path("/etc/cybernetic/mosquitto/passwd"),
        acl_file=Path("/etc/cybernetic/mosquitto/acl"),
        # devices' accounts (`cybernetic devices add`), for the device listener (8883) only;
        # there a device's client id is its username
        device_password_file=Path("/etc/cybernetic/mosquitto/devices.passwd"),
        log_file=None,  # stderr, which systemd sends to the journal
        run_as="mosquitto",
        # devices on the local network: TLS, the broker proves itself, devices log in with
        # their password, which never crosses the network in the clear (no plain device
        # listener: device_port is not set)
        tls=TlsListener(
            cafile=TLS / "devices-ca.pem",
            certfile=TLS / "server.pem",
            keyfile=TLS / "server.key",
            require_certificate=False,
        ),
        tls_port=8883,
        tls_bind="0.0.0.0",
    )
)
PY
chmod 0644 "$STAGE/etc/cybernetic/mosquitto.conf"
# Comments that cite the source tree's docs/NAME.md (the ACL, shared with the demo) name the
# installed copy instead: there is no docs/ folder on a device.
find "$STAGE/etc" -type f -exec sed -i -E \
    's#(^|[^[:alnum:]_/.-])docs/([[:alnum:]_.-]+\.md)#\1/usr/share/doc/cybernetic-edge/\2#g' {} +

install -d "$STAGE/usr/bin"
ln -s "$PREFIX/bin/cybernetic" "$STAGE/usr/bin/cybernetic"
# Debian's documentation folder for the package (its name, as policy wants): the docs the
# configuration, the units and the maintainer scripts point to, uncompressed so that those
# paths are the files; the examples as in the source tree (patterns/, policies/).
DOC=$STAGE/usr/share/doc/cybernetic-edge
install -D -m 0644 "$HERE/copyright" "$DOC/copyright"
for doc in "$REPO"/docs/*.md; do
    install -D -m 0644 "$doc" "$DOC/$(basename "$doc")"
done
(cd "$REPO/examples" && find . -type f ! -name '*.pyc' -print) | sort | while read -r example; do
    install -D -m 0644 "$REPO/examples/$example" "$DOC/examples/${example#./}"
done
install -D -m 0644 "$REPO/systemd/examples/serial-devices.conf" "$DOC/examples/serial-devices.conf"

install -d "$STAGE/DEBIAN"
(cd "$STAGE" && find etc -type f | sort | sed 's|^|/|') > "$STAGE/DEBIAN/conffiles"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
substitute() {
    sed -e "s|@VERSION@|$DEB_VERSION|g" -e "s|@ARCH@|$ARCH|g" \
        -e "s|@READER_SCHEMA@|$READER_SCHEMA|g" -e "s|@INSTALLED_SIZE@|$INSTALLED_SIZE|g" \
        -e "s|@PYTHON_DEPENDS@|$PYTHON_DEPENDS|g" -e "s|@PYTHON_MINOR@|$PYTHON_MINOR|g" "$1"
}
substitute "$HERE/debian/control.in" > "$STAGE/DEBIAN/control"
for script in preinst postinst prerm postrm; do
    substitute "$HERE/debian/$script" > "$STAGE/DEBIAN/$script"
    chmod 0755 "$STAGE/DEBIAN/$script"
done

DEB=$OUT_DIR/cybernetic-edge_${DEB_VERSION}_${ARCH}.deb
say "packing $DEB (reader schema $READER_SCHEMA, Python $PYTHON_MINOR)"
dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-gzip}" --build "$STAGE" "$DEB" >&2
echo "$DEB"
