#!/usr/bin/env bash
# Fetch Newman's network collection (graph-tool's binary .gt.gz files: polblogs, polbooks, football, ...)
# from Debian's python3-graph-tool package without installing graph-tool.
#
# The files land in ${SIMSKIP_DATA_DIR:-$HOME/.cache/simskip/data}/graph-tool/, where the simskip graph
# plugin looks for them. Idempotent: does nothing when the files are already there.
# Needs apt-get (Debian/Ubuntu) and dpkg-deb; no root needed for the download itself.
set -euo pipefail

DATA_DIR="${SIMSKIP_DATA_DIR:-$HOME/.cache/simskip/data}"
DEST="$DATA_DIR/graph-tool"
REQUIRED=(polblogs polbooks football karate)

have_all() {
    for name in "${REQUIRED[@]}"; do
        [ -s "$DEST/$name.gt.gz" ] || return 1
    done
}

if have_all; then
    echo "graph-tool collection already present in $DEST"
    exit 0
fi

for tool in apt-get dpkg-deb tar; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is required (Debian/Ubuntu) to fetch the graph-tool collection" >&2; exit 1; }
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
chmod 777 "$WORK"  # apt-get download drops privileges to _apt when run as root

cd "$WORK"
if ! apt-get download python3-graph-tool >/dev/null 2>"$WORK/apt.err"; then
    echo "apt-get download failed; refreshing the package lists and retrying" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null || true; fi
    apt-get download python3-graph-tool >/dev/null || { cat "$WORK/apt.err" >&2; exit 1; }
fi
DEB="$(ls "$WORK"/python3-graph-tool_*.deb | head -n 1)"

# Extract only the collection's data files (the package is ~45 MB, the files a few MB).
mkdir -p "$WORK/extract"
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK/extract" --wildcards '*/graph_tool/collection/*.gt.gz'
SRC="$(find "$WORK/extract" -type d -path '*/graph_tool/collection' | head -n 1)"
[ -n "$SRC" ] || { echo "error: no graph_tool/collection folder in $DEB" >&2; exit 1; }

mkdir -p "$DEST"
TMP_DEST="$(mktemp -d "$DATA_DIR/.graph-tool.XXXXXX")"
cp "$SRC"/*.gt.gz "$TMP_DEST"/
basename "$DEB" > "$TMP_DEST/SOURCE"
for f in "$TMP_DEST"/*; do mv -f "$f" "$DEST"/; done
rmdir "$TMP_DEST"

have_all || { echo "error: the package did not hold every expected file (${REQUIRED[*]})" >&2; exit 1; }
echo "graph-tool collection ($(ls "$DEST"/*.gt.gz | wc -l) networks) installed in $DEST"
