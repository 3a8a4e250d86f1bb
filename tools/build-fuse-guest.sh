#!/usr/bin/env bash
# Builds the in-guest binaries, fuse-guest (the helper), fuse-envd (the E2B-compatible envd
# it starts) and fused (the reference agent), as
# small static, stripped binaries for baking into guest images, into DIR (default:
# target/fuse-guest-static/).
set -euo pipefail
cd "$(dirname "$0")/.."
arg=${1:-target/fuse-guest-static}
# Compatibility: a path ending in /fuse-guest names the helper's file; its directory is used.
case "$arg" in */fuse-guest) dir=$(dirname "$arg") ;; *) dir=$arg ;; esac
target=$(rustc -vV | awk '/^host:/ {print $2}')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p fuse-guest --bin fuse-guest \
  -p fuse-envd --bin fuse-envd -p fused --bin fused --target "$target" --target-dir target/static
mkdir -p "$dir"
for b in fuse-guest fuse-envd fused; do
  install -m 0755 "target/static/$target/release/$b" "$dir/$b"
  strip "$dir/$b" 2>/dev/null || true
  ls -l "$dir/$b"
done
