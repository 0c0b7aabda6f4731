#!/usr/bin/env bash
# Run the external-peer interop suite (see README.md beside this file).
#
#   bash tests/interop/run.sh [extra pytest args, e.g. -k chromium]
#
# Creates (or reuses) the venv tests/interop/.venv, installs requirements.txt into it, and
# runs pytest -v on tests/interop. Exits with pytest's status (non-zero when a test fails).
# Environment: PYTHON (interpreter for the venv, default python3), QUICLAB_BIN (server binary,
# default target/debug/quiclab, built with cargo build if missing), CHROMIUM_BIN, GTLSCLIENT_BIN.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "creating venv $venv with $("$python" --version 2>&1)"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        echo "error: '$python -m venv' failed; on Debian: apt-get install python3-venv" >&2
        exit 2
    fi
fi

"$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
    -r "$here/requirements.txt"

cd "$repo"
exec "$venv/bin/python" -m pytest -v "$here" "$@"
