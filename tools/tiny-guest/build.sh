#!/usr/bin/env bash
# Builds the tiny test guests (64-bit ELF at 0x100000, entered through Firecracker's Linux
# boot path) into OUT_DIR (default: .fuse-test/tiny). Needs gcc and ld (binutils).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../.fuse-test/tiny}
mkdir -p "$out"
for g in tiny tiny-loop; do
  gcc -c "$here/$g.S" -o "$out/$g.o"
  ld -N -static -nostdlib -Ttext=0x100000 -e _start -o "$out/$g.elf" "$out/$g.o" 2>/dev/null
done
echo "$out"
