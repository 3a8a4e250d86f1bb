#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs and starts what the tests
# need, then checks formatting and lints and runs every test. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
for tool in rustfmt clippy-driver; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install the rustfmt and clippy components" >&2; exit 1; }
done

step "postgres"
eval "$(./scripts/postgres.sh)"

step "host tools (iproute2 for the test namespaces, nftables to read the agents' tables, gcc/binutils for the tiny test guests; lz4, zstd, e2fsprogs for the guest image)"
missing=""
for t in ip nft gcc ld python3 lz4 zstd mkfs.ext4 debugfs; do command -v "$t" >/dev/null 2>&1 || missing="$missing $t"; done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq iproute2 nftables gcc binutils python3 lz4 zstd e2fsprogs >/dev/null
fi

step "firecracker (real binary for the backend tests)"
if ./tools/install-firecracker.sh "$PWD/.fuse-test/bin"; then
  export FUSE_FIRECRACKER_BIN="$PWD/.fuse-test/bin/firecracker"
else
  echo "firecracker could not be installed here; its tests will skip and say so"
fi

step "qemu and the guest image (real-guest tests; cached in .fuse-test/guest)"
if [ "$(id -u)" = 0 ] && ./tools/install-qemu.sh; then
  ./tools/build-guest-image.sh --out "$PWD/.fuse-test/guest"
  export FUSE_TEST_GUEST_DIR="$PWD/.fuse-test/guest"
else
  echo "qemu could not be installed here (or not root); the real-guest tests will skip and say so"
fi

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace

step "API tests again, on Postgres"
FUSE_API_STORE=postgres cargo test -p fuse-server --test api
