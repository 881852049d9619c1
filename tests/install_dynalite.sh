#!/usr/bin/env bash
# Install the pinned dynalite (a local DynamoDB implementation for Node.js) for the
# tests. Usage: bash tests/install_dynalite.sh [DIR]   (default: $DYNALITE_DIR or
# <repo>/.dynalite). tests/servers.py looks for DIR/node_modules/dynalite/cli.js.
# Needs node >= 20 and npm; it only talks to the npm registry.
set -euo pipefail

VERSION="4.0.0"   # keep in sync with DYNALITE_VERSION in tests/servers.py
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-${DYNALITE_DIR:-$REPO_ROOT/.dynalite}}"

command -v node >/dev/null || { echo "install_dynalite: node not found" >&2; exit 1; }
command -v npm >/dev/null || { echo "install_dynalite: npm not found" >&2; exit 1; }
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
    echo "install_dynalite: dynalite $VERSION needs node >= 20, found $(node --version)" >&2
    exit 1
fi

installed="$(node -p "require('$DIR/node_modules/dynalite/package.json').version" 2>/dev/null || true)"
if [ "$installed" = "$VERSION" ]; then
    echo "install_dynalite: dynalite $VERSION already in $DIR"
    exit 0
fi

mkdir -p "$DIR"
# --no-save: no package.json/package-lock.json in DIR (only DIR/node_modules, which
# .gitignore covers). --ignore-scripts: the in-memory store needs no native build
# (classic-level ships prebuilt binaries anyway).
npm install --prefix "$DIR" --no-save --no-audit --no-fund --ignore-scripts \
    --loglevel=error "dynalite@$VERSION"
node -e "require('$DIR/node_modules/dynalite')" >/dev/null
echo "install_dynalite: dynalite $VERSION installed in $DIR"
