#!/usr/bin/env bash
# Installs Salesforce's CLI (@salesforce/cli, pinned with its whole dependency tree by package.json and
# package-lock.json beside this script) into .ci-sf-cli/ at the repository's root (git-ignored), for
# tests/test_setup_sfdx.py: it converts `stripe-sf setup --sfdx` output with Salesforce's own converter.
# CI only: it is not one of the tool's dependencies. Does nothing when that exact tree is already installed.
#
# Why a lock file: npm does not follow the CLI's own npm-shrinkwrap.json when it is installed as a dependency,
# and the newest versions of a few of its dependencies need Node.js 22 (this machine has 20): the CLI's
# 2.138.0 is the newest whose tree runs on Node.js 20, and the override pins @jsforce/jsforce-node to the
# version Salesforce shipped with it (a newer one pulls undici 8, which crashes on Node.js 20 at start).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="$root/.ci-sf-cli"
sf="$dest/node_modules/.bin/sf"
# The marker is written after a complete install only, so an interrupted one is redone.
if [ -x "$sf" ] && cmp -s "$here/package-lock.json" "$dest/installed.lock"; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "installing Salesforce's CLI: node and npm are needed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
echo "== installing @salesforce/cli into $dest (node $(node --version), npm $(npm --version))"
rm -rf "$dest"
mkdir -p "$dest"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
# --ignore-scripts: nothing in the tree needs its install scripts to convert source; --omit=dev: none needed.
if ! (cd "$dest" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error); then
  echo "installing Salesforce's CLI failed: npm ci in $dest (see npm's messages above)" >&2
  exit 1
fi
cp "$here/package-lock.json" "$dest/installed.lock"
