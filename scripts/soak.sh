#!/usr/bin/env bash
# The soak run (issue 6): 2 `fuse` replicas on a private Postgres, 3 `fc-agent` hosts in
# network namespaces, mixed create/exec/drain/destroy traffic with one random fault a
# minute, then counts and the fault suite's consistency check. Needs root.
#   scripts/soak.sh                 # 10 minutes
#   FUSE_SOAK_SECS=120 FUSE_SOAK_FAULT_SECS=20 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(./scripts/postgres.sh)"
cargo build --release -p fuse-server -p fuse-hostagent -p fuse-guest
exec cargo test --release -p fuse-server --test cluster soak -- --ignored --nocapture
