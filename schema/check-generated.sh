#!/usr/bin/env bash
# CI check: the committed transport-capnp/src/shoal_capnp.rs matches schema/shoal.capnp.
# Regenerates into a temp dir and diffs. Skips (exit 0, with a message) when the Cap'n Proto
# compiler or the capnpc-rust plugin is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v capnp >/dev/null || ! command -v capnpc-rust >/dev/null; then
  echo "check-generated: skipped (capnp or capnpc-rust not installed; see schema/regenerate.sh)"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
schema/regenerate.sh "$tmp" >/dev/null
if ! diff -u transport-capnp/src/shoal_capnp.rs "$tmp/shoal_capnp.rs"; then
  echo "check-generated: transport-capnp/src/shoal_capnp.rs is stale; run schema/regenerate.sh and commit" >&2
  exit 1
fi
echo "check-generated: generated code is up to date"
