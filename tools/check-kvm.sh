#!/usr/bin/env bash
# Tells whether this host's /dev/kvm can really run guests, by booting something small
# and watching for its marker (an existing /dev/kvm proves nothing: a software-only KVM,
# such as PVM inside a cloud VM, dies early in a Linux boot).
#
# Usage: tools/check-kvm.sh [--firecracker BIN] [--images DIR]
#   1. Firecracker + the tiny test guest (tools/tiny-guest): the VMM path works.
#   2. QEMU -accel kvm + the guest image's kernel and initramfs (fuse.probe=1): a Linux
#      guest reaches userspace under KVM.
# Exit 0 when a Linux guest runs under KVM (use the firecracker backend, or qemu with
# FC_AGENT_QEMU_ACCEL=kvm); 1 otherwise (use the qemu backend, which falls back to TCG).
set -uo pipefail
cd "$(dirname "$0")/.."
fc=$(command -v firecracker || echo .fuse-test/bin/firecracker)
images=.fuse-test/guest
while [ $# -gt 0 ]; do
  case "$1" in
    --firecracker) fc=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
result=1
if [ ! -e /dev/kvm ]; then
  echo "no /dev/kvm: no hardware virtualisation; use the qemu backend (TCG)"
  exit 1
fi
grep -qE 'vmx|svm' /proc/cpuinfo || echo "note: the CPU flags show no vmx/svm (nested or software KVM?)"
lsmod 2>/dev/null | grep -q '^kvm_pvm' && echo "note: kvm_pvm is loaded (software KVM; Linux guests will likely not boot)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [ -x "$fc" ] && command -v gcc >/dev/null; then
  tools/tiny-guest/build.sh "$tmp/tiny" >/dev/null
  cat > "$tmp/vm.json" <<JSON
{"boot-source":{"kernel_image_path":"$tmp/tiny/tiny.elf","boot_args":"x"},
 "drives":[],"machine-config":{"vcpu_count":1,"mem_size_mib":64}}
JSON
  if timeout 10 "$fc" --no-api --config-file "$tmp/vm.json" --level Error 2>&1 | grep -q FUSE-TINY-OK; then
    echo "firecracker: the tiny test guest ran (the VMM and /dev/kvm work)"
  else
    echo "firecracker: the tiny test guest did not run"
  fi
else
  echo "firecracker: skipped (no firecracker binary or no gcc)"
fi
if command -v qemu-system-x86_64 >/dev/null && [ -s "$images/vmlinuz" ]; then
  out=$(timeout 20 qemu-system-x86_64 -M microvm,isa-serial=on -accel kvm -cpu host -m 128 -smp 1 \
    -nodefaults -no-user-config -display none -monitor none -no-reboot -serial stdio \
    -kernel "$images/vmlinuz" -initrd "$images/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet fuse.probe=1" 2>&1)
  if grep -q FUSE-PROBE-OK <<<"$out"; then
    echo "linux under KVM: a Linux guest reached userspace: this host can run guests with KVM"
    result=0
  else
    echo "linux under KVM: the guest did not reach userspace ($(tail -1 <<<"$out")); use the qemu backend with TCG"
  fi
else
  echo "linux under KVM: skipped (no qemu-system-x86_64 or no guest image in $images; tools/install-qemu.sh, tools/build-guest-image.sh)"
fi
exit $result
