#!/usr/bin/env bash
# Install AWS's own DynamoDB Local (the tests' reference engine), pinned and
# checksum-verified. It ships inside the npm package amplify-dynamodb-simulator
# (emulator/DynamoDBLocal.jar 1.25.x with its native libraries); only the npm
# registry is contacted (`npm pack`), nothing is executed from the package.
# Usage: bash tests/install_ddblocal.sh [DIR]   (default: $DDBLOCAL_DIR or <repo>/.ddblocal)
# Idempotent: a verified install is left alone. Installs Java 17 (Debian) if missing.
set -euo pipefail

PACKAGE="amplify-dynamodb-simulator"
VERSION="2.9.30"   # keep in sync with DDBLOCAL_PACKAGE in tests/servers.py
SHA256="3503ffac19f183407909fecdacf4db51ab1fdad1da7b2f177016670b2d80e4b9"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-${DDBLOCAL_DIR:-$REPO_ROOT/.ddblocal}}"

if ! command -v java >/dev/null; then
    echo "install_ddblocal: java not found, installing openjdk-17-jre-headless" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if [ -f "$DIR/installed" ] && [ "$(cat "$DIR/installed")" = "$PACKAGE@$VERSION $SHA256" ] \
        && [ -f "$DIR/DynamoDBLocal.jar" ]; then
    echo "install_ddblocal: DynamoDB Local ($PACKAGE@$VERSION) already in $DIR"
    exit 0
fi

command -v npm >/dev/null || { echo "install_ddblocal: npm not found" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent --loglevel=error "$PACKAGE@$VERSION" >/dev/null)
tgz="$tmp/$PACKAGE-$VERSION.tgz"
echo "$SHA256  $tgz" | sha256sum -c --quiet - || {
    echo "install_ddblocal: checksum mismatch for $PACKAGE@$VERSION" >&2; exit 1; }
tar xzf "$tgz" -C "$tmp"
rm -rf "$DIR"
mkdir -p "$DIR"
cp -R "$tmp/package/emulator/." "$DIR/"
echo "$PACKAGE@$VERSION $SHA256" > "$DIR/installed"
echo "install_ddblocal: DynamoDB Local ($PACKAGE@$VERSION) installed in $DIR"
