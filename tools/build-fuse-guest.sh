#!/usr/bin/env bash
# Builds fuse-guest as one small static binary (for baking into guest images) into OUT
# (default: target/fuse-guest-static/fuse-guest), stripped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/fuse-guest-static/fuse-guest}
target=$(rustc -vV | awk '/^host:/ {print $2}')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p fuse-guest --bin fuse-guest \
  --target "$target" --target-dir target/static
mkdir -p "$(dirname "$out")"
install -m 0755 "target/static/$target/release/fuse-guest" "$out"
strip "$out" 2>/dev/null || true
file "$out" 2>/dev/null || true
ls -l "$out"
