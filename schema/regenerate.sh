#!/usr/bin/env bash
# Regenerates the committed Rust code for schema/shoal.capnp.
#
# Needs:
#   - the Cap'n Proto compiler:  apt-get install -y capnproto libcapnp-dev
#   - the Rust plugin, at the same 0.27.x line as the `capnp` crate:
#       cargo install capnpc --version =0.27.0 --locked
#
# Usage: schema/regenerate.sh [OUTPUT_DIR]   (default: transport-capnp/src)
# Writes OUTPUT_DIR/shoal_capnp.rs. Commit the result: builds never need `capnp`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-transport-capnp/src}"
command -v capnp >/dev/null || { echo "capnp not found: apt-get install -y capnproto libcapnp-dev" >&2; exit 1; }
command -v capnpc-rust >/dev/null || { echo "capnpc-rust not found: cargo install capnpc --version =0.27.0 --locked" >&2; exit 1; }
mkdir -p "$out"
capnp compile --src-prefix=schema -orust:"$out" schema/shoal.capnp
echo "wrote $out/shoal_capnp.rs"
