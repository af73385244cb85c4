#!/usr/bin/env bash
# Fetch Debian's English package descriptions (the Translation-en index of the main archive,
# about 13 MB) for the text plugin's text/debian_* tasks. apt is often configured to fetch no
# translations; one `apt-get -o Acquire::Languages=en update` fetches them into /var/lib/apt/lists/.
# Needs root or sudo; does nothing when the index is already there.
set -euo pipefail

LISTS=/var/lib/apt/lists
if compgen -G "$LISTS/*_i18n_Translation-en*" >/dev/null; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "fetch-debian-descriptions: not root and no sudo; run as root: apt-get -o Acquire::Languages=en update" >&2
    exit 0
  fi
fi

$SUDO apt-get -q -o Acquire::Languages=en update
if ! compgen -G "$LISTS/*_i18n_Translation-en*" >/dev/null; then
  echo "fetch-debian-descriptions: apt-get update fetched no Translation-en index into $LISTS" >&2
  exit 1
fi
