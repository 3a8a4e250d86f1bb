#!/usr/bin/env bash
# Builds the guest image for fc-agent from Debian packages only:
#
#   OUT/vmlinuz           the kernel (bzImage) of linux-image-<abi>-cloud-amd64, for QEMU
#   OUT/vmlinux           the ELF kernel cut out of it, for Firecracker
#   OUT/initramfs.cpio.gz busybox-static + the virtio modules; mounts /dev/vda, switch_root
#   OUT/rootfs.ext4       ext4 root: busybox (or a full Debian with --debootstrap),
#                         fuse-guest started at boot (it starts fuse-envd, beside it in
#                         /usr/local/bin), fused in /usr/local/bin. No SSH keys.
#   OUT/kernel-release    the guest kernel's `uname -r`
#
# Usage: tools/build-guest-image.sh [--out DIR] [--fuse-guest BIN] [--fused BIN]
#                                   [--size-mb N] [--debootstrap [--suite S] [--mirror URL]]
# Defaults: OUT=.fuse-test/guest; the static binaries are built with
# tools/build-fuse-guest.sh (fuse-guest, fuse-envd and fused; fuse-envd is taken from beside
# --fuse-guest). Cached: the kernel and initramfs are
# kept while present, the root image is rebuilt only when the binaries or this script
# change. Needs root (file ownership in the image, debootstrap), apt-get, dpkg, mkfs.ext4,
# python3, lz4/zstd (to unpack the kernel payload).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=.fuse-test/guest
fuse_guest=""
fused=""
size_mb=""
debootstrap=0
suite=bookworm
mirror=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --fuse-guest) fuse_guest=$2; shift 2 ;;
    --fused) fused=$2; shift 2 ;;
    --size-mb) size_mb=$2; shift 2 ;;
    --debootstrap) debootstrap=1; shift ;;
    --suite) suite=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$size_mb" ]; then
  if [ "$debootstrap" = 1 ]; then size_mb=1024; else size_mb=256; fi
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
say() { printf 'build-guest-image: %s\n' "$*" >&2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

modules="virtio_ring virtio virtio_mmio virtio_console virtio_blk failover net_failover virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"

# --- Debian packages ---------------------------------------------------------------------
fetch_deb() { # fetch_deb PACKAGE DIR: downloads and unpacks one package (no install)
  (cd "$work" && apt-get download -q "$1" >/dev/null 2>&1) || {
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$work" && apt-get download -q "$1" >/dev/null)
  }
  mkdir -p "$2"
  dpkg -x "$work/$(cd "$work" && ls -t "${1%%=*}"_*.deb | head -1)" "$2"
}

busybox_bin() {
  if [ ! -x "$work/bb/bin/busybox" ]; then
    fetch_deb busybox-static "$work/bb"
  fi
  echo "$work/bb/bin/busybox"
}

# --- kernel ------------------------------------------------------------------------------
if [ ! -s "$out/vmlinuz" ] || [ ! -s "$out/vmlinux" ] || [ ! -s "$out/initramfs.cpio.gz" ]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq >/dev/null
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  [ -n "$pkg" ] || { say "cannot resolve linux-image-cloud-amd64"; exit 1; }
  say "kernel package $pkg"
  fetch_deb "$pkg" "$work/k"
  release=${pkg#linux-image-}
  install -m 0644 "$work/k/boot/vmlinuz-$release" "$out/vmlinuz.tmp"
  # The ELF vmlinux for Firecracker: cut the compressed payload out of the bzImage (setup
  # header: setup_sects at 0x1f1, payload offset/length at 0x248) and decompress it.
  python3 - "$out/vmlinuz.tmp" "$work/payload" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
assert d[0x202:0x206] == b"HdrS", "not a bzImage"
setup = (d[0x1f1] or 4) + 1
off, length = struct.unpack_from("<II", d, 0x248)
p = d[setup * 512 + off: setup * 512 + off + length]
open(sys.argv[2], "wb").write(p[:-4])  # the last 4 bytes are the uncompressed size
PY
  need() { command -v "$1" >/dev/null || { say "the kernel payload needs $1 (apt-get install $1)"; exit 1; }; }
  case "$(head -c 4 "$work/payload" | od -An -tx1 | tr -d ' ')" in
    02214c18) need lz4 ;;
    28b52ffd) need zstd ;;
  esac
  case "$(head -c 4 "$work/payload" | od -An -tx1 | tr -d ' ')" in
    02214c18) lz4 -dc "$work/payload" > "$out/vmlinux.tmp" 2>/dev/null || true ;;
    28b52ffd) zstd -dcq "$work/payload" > "$out/vmlinux.tmp" 2>/dev/null || true ;;
    1f8b*) gzip -dc "$work/payload" > "$out/vmlinux.tmp" 2>/dev/null || true ;;
    fd377a58) xz -dc "$work/payload" > "$out/vmlinux.tmp" 2>/dev/null || true ;;
    *) say "unknown kernel payload compression"; exit 1 ;;
  esac
  [ "$(head -c 4 "$out/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || { say "vmlinux extraction failed"; exit 1; }

  # initramfs: busybox, the virtio modules, an init that loads them in dependency order and
  # switches to /dev/vda. A root disk that cannot be mounted powers the guest off with a
  # message on the console, so a broken image fails fast instead of hanging.
  bb=$(busybox_bin)
  ir=$work/initramfs
  mkdir -p "$ir"/{bin,dev,proc,sys,newroot,lib/modules}
  install -m 0755 "$bb" "$ir/bin/busybox"
  for a in sh mount umount insmod switch_root mkdir cat echo sleep poweroff reboot; do ln -s busybox "$ir/bin/$a"; done
  for m in $modules; do
    f=$(find "$work/k/lib/modules/$release" -name "$m.ko*" | head -1)
    [ -n "$f" ] || { say "module $m not in the package (built in?)"; continue; }
    case "$f" in
      *.xz) xz -dc "$f" > "$ir/lib/modules/$m.ko" ;;
      *.zst) zstd -dcq "$f" > "$ir/lib/modules/$m.ko" ;;
      *) cp "$f" "$ir/lib/modules/$m.ko" ;;
    esac
  done
  cat > "$ir/init" <<EOF
#!/bin/sh
# fuse initramfs: load the virtio drivers, mount the root disk, hand over to its init.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $modules; do
  [ -f /lib/modules/\$m.ko ] && insmod /lib/modules/\$m.ko 2>/dev/null
done
case " \$(cat /proc/cmdline) " in
  *" fuse.probe=1 "*) echo "FUSE-PROBE-OK"; poweroff -f ;;
esac
i=0
while [ ! -b /dev/vda ] && [ \$i -lt 50 ]; do sleep 0.1; i=\$((i + 1)); done
if ! mount -t ext4 /dev/vda /newroot; then
  echo "fuse-init: cannot mount the root disk /dev/vda as ext4: the image is broken"
  poweroff -f
  sleep 5
  exit 1
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF
  chmod 0755 "$ir/init"
  (cd "$ir" && find . | LC_ALL=C sort | "$ir/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -9 > "$out/initramfs.cpio.gz.tmp"
  mv "$out/vmlinuz.tmp" "$out/vmlinuz"
  mv "$out/vmlinux.tmp" "$out/vmlinux"
  mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
  echo "$release" > "$out/kernel-release"
  rm -f "$out/rootfs.stamp"
  say "kernel $release, initramfs $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
fi

# --- the static binaries -----------------------------------------------------------------
if [ -z "$fuse_guest" ] || [ -z "$fused" ]; then
  tools/build-fuse-guest.sh >/dev/null
  fuse_guest=${fuse_guest:-$repo/target/fuse-guest-static/fuse-guest}
  fused=${fused:-$repo/target/fuse-guest-static/fused}
fi
fuse_envd=$(dirname "$fuse_guest")/fuse-envd
for b in "$fuse_guest" "$fuse_envd" "$fused"; do [ -x "$b" ] || { say "missing binary $b"; exit 1; }; done

stamp=$( (sha256sum "$fuse_guest" "$fuse_envd" "$fused" "$0" "$repo/tools/guest/pkill" | cut -d' ' -f1; echo "$size_mb $debootstrap $suite") | sha256sum | cut -d' ' -f1)
if [ -s "$out/rootfs.ext4" ] && [ "$(cat "$out/rootfs.stamp" 2>/dev/null)" = "$stamp" ]; then
  say "rootfs up to date ($out)"
  exit 0
fi

# --- root filesystem ---------------------------------------------------------------------
root=$work/root
if [ "$debootstrap" = 1 ]; then
  command -v debootstrap >/dev/null || { say "--debootstrap needs the debootstrap package"; exit 1; }
  say "debootstrap $suite (a few minutes)"
  debootstrap --variant=minbase --include=systemd-sysv,iproute2,procps,ca-certificates,wget "$suite" "$root" "$mirror" >&2
  rm -f "$root"/etc/ssh/ssh_host_* 2>/dev/null || true
else
  bb=$(busybox_bin)
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/local/sbin,etc/init.d,dev,proc,sys,run,tmp,root,var/log,fuse}
  install -m 0755 "$bb" "$root/bin/busybox"
  for a in $("$bb" --list-full); do
    [ "$a" = bin/busybox ] || [ -e "$root/$a" ] || ln -s /bin/busybox "$root/$a"
  done
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\n' > "$root/etc/group"
  echo fuse-guest > "$root/etc/hostname"
  # busybox has no pkill/pgrep; drain commands use them (`pkill -TERM NAME`, `pkill -f`).
  install -m 0755 "$repo/tools/guest/pkill" "$root/usr/bin/pkill"
  install -m 0755 "$repo/tools/guest/pkill" "$root/usr/bin/pgrep"
  cat > "$root/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::respawn:/usr/local/sbin/fuse-guest-start
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
EOF
  cat > "$root/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# Mounts, hostname, and eth0 from the kernel command line's ip=GUEST::GW:MASK::DEV:off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
hostname -F /etc/hostname
ip link set lo up
for w in $(cat /proc/cmdline); do
  case "$w" in
    ip=*)
      IFS=: read -r addr _ gw mask _ dev _ <<EOT
${w#ip=}
EOT
      eval "$(ipcalc -p "$addr" "$mask")"
      ip addr add "$addr/$PREFIX" dev "${dev:-eth0}"
      ip link set "${dev:-eth0}" up
      [ -n "$gw" ] && ip route add default via "$gw"
      ;;
  esac
done
EOF
  chmod 0755 "$root/etc/init.d/rcS"
fi
mkdir -p "$root/usr/local/bin" "$root/usr/local/sbin" "$root/fuse" "$root/var/log"
install -m 0755 "$fuse_guest" "$root/usr/local/bin/fuse-guest"
install -m 0755 "$fuse_envd" "$root/usr/local/bin/fuse-envd"
install -m 0755 "$fused" "$root/usr/local/bin/fused"
cat > "$root/usr/local/sbin/fuse-guest-start" <<'EOF'
#!/bin/sh
# Starts fuse-guest on the private link named on the kernel command line: fuse.link=vport:NAME
# (QEMU virtio-serial) or fuse.port=N (vsock); the per-VM token from fuse.token=.
link="" port=1024
for w in $(cat /proc/cmdline); do
  case "$w" in
    fuse.token=*) FUSE_GUEST_TOKEN=${w#fuse.token=} ;;
    fuse.link=*) link=${w#fuse.link=} ;;
    fuse.port=*) port=${w#fuse.port=} ;;
  esac
done
export FUSE_GUEST_TOKEN
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
exec /usr/local/bin/fuse-guest --listen "${link:-vsock:$port}" --token-env FUSE_GUEST_TOKEN
EOF
chmod 0755 "$root/usr/local/sbin/fuse-guest-start"
if [ "$debootstrap" = 1 ]; then
  cat > "$root/etc/systemd/system/fuse-guest.service" <<'EOF'
[Unit]
Description=Fuse guest helper
After=local-fs.target

[Service]
ExecStart=/usr/local/sbin/fuse-guest-start
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/fuse-guest.service "$root/etc/systemd/system/multi-user.target.wants/fuse-guest.service"
  echo fuse-guest > "$root/etc/hostname"
  # eth0 from the kernel command line, as in the busybox image.
  cat > "$root/usr/local/sbin/fuse-net" <<'EOF'
#!/bin/sh
for w in $(cat /proc/cmdline); do
  case "$w" in
    ip=*) IFS=: read -r addr _ gw mask _ dev _ <<EOT
${w#ip=}
EOT
      p=0; for o in $(echo "$mask" | tr . ' '); do while [ "$o" -gt 0 ]; do p=$((p + (o & 1))); o=$((o >> 1)); done; done
      ip addr add "$addr/$p" dev "${dev:-eth0}"; ip link set "${dev:-eth0}" up
      [ -n "$gw" ] && ip route add default via "$gw" ;;
  esac
done
EOF
  chmod 0755 "$root/usr/local/sbin/fuse-net"
  cat > "$root/etc/systemd/system/fuse-net.service" <<'EOF'
[Unit]
Description=Guest network from the kernel command line
Before=fuse-guest.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/fuse-net

[Install]
WantedBy=multi-user.target
EOF
  ln -sf /etc/systemd/system/fuse-net.service "$root/etc/systemd/system/multi-user.target.wants/fuse-net.service"
fi
rm -f "$out/rootfs.ext4.tmp"
truncate -s "${size_mb}M" "$out/rootfs.ext4.tmp"
mkfs.ext4 -q -F -b 4096 -L fuse-root -d "$root" "$out/rootfs.ext4.tmp"
mv "$out/rootfs.ext4.tmp" "$out/rootfs.ext4"
echo "$stamp" > "$out/rootfs.stamp"
say "rootfs $(du -h --apparent-size "$out/rootfs.ext4" | cut -f1) (allocated $(du -h "$out/rootfs.ext4" | cut -f1)) in $out"
