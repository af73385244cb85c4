#!/usr/bin/env bash
# Fetch the Debian-packaged data simskip's tasks and tests read:
#   - dataset-fashion-mnist  -> /usr/share/datasets/fashion-mnist/ (apt-get install; needs root or sudo)
#   - graph-tool's network collection (polblogs, polbooks, football, ...), unpacked from the
#     python3-graph-tool package without installing it (scripts/fetch-graph-data.sh)
#   - Debian's English package descriptions -> /var/lib/apt/lists/*_i18n_Translation-en*
#     (scripts/fetch-debian-descriptions.sh; needs root or sudo)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "fetch-data: not root and no sudo; install dataset-fashion-mnist yourself: apt-get install dataset-fashion-mnist" >&2
  fi
fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
  if ! apt-cache policy dataset-fashion-mnist 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    $SUDO apt-get update -q
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist
fi

if [ -f scripts/fetch-graph-data.sh ]; then
  bash scripts/fetch-graph-data.sh
fi

# Debian's English package descriptions (Translation-en) for text/debian_retrieval and text/debian_sections.
if [ -f scripts/fetch-debian-descriptions.sh ]; then
  bash scripts/fetch-debian-descriptions.sh
fi
