#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs and starts what the tests
# need, then checks formatting and lints and runs every test. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
# This script installs every prerequisite of the tests, so a test that finds one missing
# fails instead of skipping (fuse-testkit's prerequisites).
export CI="${CI:-1}"

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
for tool in rustfmt clippy-driver; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install the rustfmt and clippy components" >&2; exit 1; }
done

step "postgres"
eval "$(./scripts/postgres.sh)"

step "host tools (iproute2 for the test namespaces, nftables to read the agents' tables, gcc/binutils for the tiny test guests; lz4, zstd, e2fsprogs for the guest image; python3 with venv for the SDK compatibility test)"
missing=""
for t in ip nft gcc ld python3 lz4 zstd mkfs.ext4 debugfs; do command -v "$t" >/dev/null 2>&1 || missing="$missing $t"; done
# Debian's python3 makes venvs with pip only with python3-venv (ensurepip).
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
if [ -n "$missing" ]; then
  echo "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq iproute2 nftables gcc binutils python3 python3-venv lz4 zstd e2fsprogs >/dev/null
fi

step "chromium and chromedriver (Debian's, for the dashboard's browser test)"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi

step "firecracker (real binary for the backend tests)"
./tools/install-firecracker.sh "$PWD/.fuse-test/bin" ||
  { echo "firecracker could not be installed; its tests cannot run" >&2; exit 1; }
export FUSE_FIRECRACKER_BIN="$PWD/.fuse-test/bin/firecracker"

step "qemu and the guest image (real-guest tests; cached in .fuse-test/guest)"
[ "$(id -u)" = 0 ] || { echo "the tests need root (network namespaces, taps)" >&2; exit 1; }
./tools/install-qemu.sh || { echo "QEMU could not be installed; the real-guest tests cannot run" >&2; exit 1; }
./tools/build-guest-image.sh --out "$PWD/.fuse-test/guest"
export FUSE_TEST_GUEST_DIR="$PWD/.fuse-test/guest"

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace

step "API tests again, on Postgres"
FUSE_API_STORE=postgres cargo test -p fuse-server --test api
