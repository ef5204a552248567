#!/bin/sh
# Build a Debian package of the device side with dpkg-deb:
#
#   scripts/build-deb.sh [PYTHON]        # default: python3; writes dist/edge-agent_VERSION_ARCH.deb
#   DEB_OUT=dir scripts/build-deb.sh     # the .deb into dir instead of dist/
#   LLAMA_WHEEL_DIR=dir scripts/build-deb.sh   # also carry a llama-cpp-python wheel (the `llm`
#                                               # extra), e.g. one built on the device with
#                                               # WHEEL_DIR=dir scripts/build-llama.sh
#
# The package carries the project's wheel and the wheels of its dependencies (core + gpio) for
# this machine's architecture and this Python version; its postinst makes /opt/edge-agent from
# them without network. dpkg owns the unit, sysusers/tmpfiles snippets, the man page and the
# example config; postinst makes the virtualenv and /etc/edge-agent/config.toml, postrm
# removes the virtualenv (purge: the config and the database too).
set -eu
PY=${1:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VERSION=$("$PY" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
PYVER=$("$PY" -c "import sys; print(f'python{sys.version_info[0]}.{sys.version_info[1]}')")
ARCH=$(dpkg --print-architecture)
MAINTAINER=${DEB_MAINTAINER:-edge-agent maintainers <root@localhost>}
STAGE="$ROOT/build/deb/edge-agent_${VERSION}_${ARCH}"
OUT=${DEB_OUT:-dist}
# an in-tree build reuses build/lib: start clean, so no file deleted since slips in
rm -rf "$STAGE" "$ROOT/build/lib" "$ROOT/build/bdist."* "$ROOT"/*.egg-info
mkdir -p "$STAGE/DEBIAN" "$STAGE/usr/share/edge-agent/wheels" "$STAGE/lib/systemd/system" \
    "$STAGE/usr/lib/sysusers.d" "$STAGE/usr/lib/tmpfiles.d" "$STAGE/usr/share/man/man1" \
    "$STAGE/usr/share/doc/edge-agent/examples"

# the project and every dependency as wheels (from the index or pip's cache)
"$PY" -m pip wheel -q --disable-pip-version-check -w "$STAGE/usr/share/edge-agent/wheels" ".[gpio]"
if [ -n "${LLAMA_WHEEL_DIR:-}" ]; then
    cp "$LLAMA_WHEEL_DIR"/llama_cpp_python-*.whl "$STAGE/usr/share/edge-agent/wheels/"
    "$PY" -m pip wheel -q --disable-pip-version-check -w "$STAGE/usr/share/edge-agent/wheels" \
        --find-links "$LLAMA_WHEEL_DIR" ".[gpio,llm]"
fi

# files dpkg owns: the unit points at the virtualenv postinst makes
SYS=systemd
sed 's|/usr/local/bin/edge-agent |/opt/edge-agent/bin/edge-agent |' "$SYS/edge-agent.service" \
    > "$STAGE/lib/systemd/system/edge-agent.service"
cp "$SYS/edge-agent.sysusers.conf" "$STAGE/usr/lib/sysusers.d/edge-agent.conf"
cp "$SYS/edge-agent.tmpfiles.conf" "$STAGE/usr/lib/tmpfiles.d/edge-agent.conf"
cp "$SYS/edge-agent.example.toml" "$STAGE/usr/share/doc/edge-agent/examples/config.toml"
# the man page comes from the CLI's parser, which needs the project's dependencies: write it
# with a scratch virtualenv made from the wheels just gathered (offline), not with "$PY",
# which may be a bare interpreter (the Makefile's)
MANVENV="$ROOT/build/deb/manvenv"
rm -rf "$MANVENV"
"$PY" -m venv "$MANVENV"
"$MANVENV/bin/pip" install -q --disable-pip-version-check --no-index \
    --find-links "$STAGE/usr/share/edge-agent/wheels" "edge-agent[gpio]"
"$MANVENV/bin/python" scripts/manpages.py "$STAGE/build-man" >/dev/null
rm -rf "$MANVENV"
gzip -9n -c "$STAGE/build-man/edge-agent.1" > "$STAGE/usr/share/man/man1/edge-agent.1.gz"
rm -rf "$STAGE/build-man"
find "$STAGE" -type d -exec chmod 755 {} +
find "$STAGE" -type f -exec chmod 644 {} +

SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
for f in postinst prerm postrm; do
    sed "s|@PYTHON@|$PYVER|g" "scripts/deb/$f" > "$STAGE/DEBIAN/$f"
    chmod 755 "$STAGE/DEBIAN/$f"
done
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@PYTHON@|$PYVER|g" \
    -e "s|@SIZE@|$SIZE|" -e "s|@MAINTAINER@|$MAINTAINER|" scripts/deb/control \
    > "$STAGE/DEBIAN/control"
mkdir -p "$OUT"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$OUT/edge-agent_${VERSION}_${ARCH}.deb" >/dev/null
echo "$OUT/edge-agent_${VERSION}_${ARCH}.deb"
