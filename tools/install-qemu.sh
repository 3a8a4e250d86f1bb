#!/usr/bin/env bash
# Installs QEMU (qemu-system-x86 with the microvm machine) from Debian bookworm-backports,
# as ../docs/hosts.md describes. Not bookworm's own 7.2: installing that removes the
# preinstalled qemu-utils on some images, and 10.x is what the qemu backend is tested with.
# Idempotent: does nothing when a qemu-system-x86_64 >= 9 is already installed (the backend
# needs `file:` migration, QEMU 8.2 and later).
set -euo pipefail
have_version() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
  local v
  v=$(qemu-system-x86_64 --version | awk 'NR==1 {print $4}')
  [ "${v%%.*}" -ge 9 ] 2>/dev/null
}
if have_version; then
  qemu-system-x86_64 --version | head -1
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-qemu: must run as root (apt-get)" >&2
  exit 1
fi
. /etc/os-release
codename=${VERSION_CODENAME:-bookworm}
list=/etc/apt/sources.list.d/backports.list
if ! grep -rqs "$codename-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian $codename-backports main" > "$list"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends -t "$codename-backports" qemu-system-x86 >/dev/null
qemu-system-x86_64 --version | head -1
