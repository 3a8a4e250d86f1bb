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

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace

step "API tests again, on Postgres"
FUSE_API_STORE=postgres cargo test -p fuse-server --test api
