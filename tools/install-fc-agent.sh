#!/usr/bin/env bash
# Installs fc-agent as a systemd service on this host, with a freshly generated token, and
# prints the command that registers the host with the control plane.
#
# Usage: tools/install-fc-agent.sh [--root DIR] [--bin PATH] [--backend firecracker|qemu]
#          [--images DIR] [--state-dir DIR] [--firecracker PATH] [--host-id ID]
#          [--public-host ADDR] [--listen ADDR:PORT] [--fuse-url URL]
#          [--no-start] [--no-systemd] [--foreground]
#
#   --root DIR        install under DIR instead of / (for packaging and for tests; implies
#                     --no-start; the files written name paths as seen from DIR)
#   --bin PATH        the fc-agent binary (default: target/release/fc-agent of this checkout)
#   --backend B       firecracker (default when /usr/local/bin/firecracker exists) or qemu
#   --images DIR      the guest image (default /var/lib/fuse/guest: vmlinux, vmlinuz,
#                     initramfs.cpio.gz, rootfs.ext4 from tools/build-guest-image.sh)
#   --state-dir DIR   the agent's state directory, FC_AGENT_DIR (default /var/lib/fc-agent)
#   --firecracker P   the Firecracker binary (default /usr/local/bin/firecracker)
#   --no-systemd      install the binary and its configuration without a systemd unit and
#                     print the command that runs the agent (for machines without systemd)
#   --foreground      like --no-systemd, then run the agent in this terminal
#
# Relative paths are taken from the directory the script is run in.
# Writes ROOT/usr/local/bin/fc-agent, ROOT/etc/fc-agent/fc-agent.env (mode 0600, the token
# inside; kept when it already exists, so a re-install keeps the host's token) and
# ROOT/etc/systemd/system/fc-agent.service; then enables and starts it (unless --no-start).
# Without --root it needs root and, unless --no-systemd, a running systemd: it refuses
# before writing anything otherwise.
set -euo pipefail
here=$PWD
checkout=$(cd "$(dirname "$0")/.." && pwd)
# A path as given, made absolute from where the script was run.
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$here" "$1" ;; esac; }
root=""
bin=$checkout/target/release/fc-agent
backend=""
images=/var/lib/fuse/guest
state_dir=/var/lib/fc-agent
firecracker=/usr/local/bin/firecracker
systemd=1
foreground=0
host_id=$(hostname -s 2>/dev/null || echo host-1)
public_host=""
listen=0.0.0.0:8090
fuse_url='${FUSE_URL:-http://localhost:8080}'
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$(abs "$2"); start=0; shift 2 ;;
    --bin) bin=$(abs "$2"); shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --images) images=$(abs "$2"); shift 2 ;;
    --state-dir) state_dir=$(abs "$2"); shift 2 ;;
    --firecracker) firecracker=$(abs "$2"); shift 2 ;;
    --no-systemd) systemd=0; start=0; shift ;;
    --foreground) systemd=0; start=0; foreground=1; shift ;;
    --host-id) host_id=$2; shift 2 ;;
    --public-host) public_host=$2; shift 2 ;;
    --listen) listen=$2; shift 2 ;;
    --fuse-url) fuse_url=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$root" ]; then
  [ "$(id -u)" = 0 ] || { echo "install-fc-agent: installing into / needs root (sudo), or use --root DIR" >&2; exit 1; }
  # systemd is running when this directory exists (sd_booted(3)).
  if [ "$systemd" = 1 ] && [ ! -d "${FUSE_INSTALL_SYSTEMD_DIR:-/run/systemd/system}" ]; then
    cat >&2 <<'MSG'
install-fc-agent: this machine does not run systemd, so there is no service to install;
nothing was written. Either
  --no-systemd    install the binary and its configuration and print the command that
                  runs the agent (start it with your own supervisor), or
  --foreground    install them and run the agent now, in this terminal.
MSG
    exit 1
  fi
fi
[ -x "$bin" ] || { echo "install-fc-agent: no fc-agent binary at $bin (cargo build --release -p fuse-hostagent)" >&2; exit 1; }
if [ -z "$backend" ]; then
  if [ -x "$root$firecracker" ] || command -v firecracker >/dev/null 2>&1; then backend=firecracker; else backend=qemu; fi
fi
case "$backend" in firecracker|qemu) ;; *) echo "--backend must be firecracker or qemu" >&2; exit 2 ;; esac
if [ -z "$public_host" ]; then
  public_host=$(ip -o route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}' | head -1)
  public_host=${public_host:-127.0.0.1}
fi
install -d -m 0755 "$root/usr/local/bin"
[ "$systemd" = 0 ] || install -d -m 0755 "$root/etc/systemd/system"
install -d -m 0700 "$root/etc/fc-agent" "$root$state_dir"
install -m 0755 "$bin" "$root/usr/local/bin/fc-agent"
env_file=$root/etc/fc-agent/fc-agent.env
if [ -s "$env_file" ] && grep -q '^FC_AGENT_TOKEN=.\{16,\}' "$env_file"; then
  token=$(sed -n 's/^FC_AGENT_TOKEN=//p' "$env_file")
  echo "install-fc-agent: keeping the existing token in $env_file" >&2
else
  token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  if [ "$backend" = firecracker ]; then kernel=$images/vmlinux; else kernel=$images/vmlinuz; fi
  (umask 077; : > "$env_file.tmp")
  cat > "$env_file.tmp" <<ENV
# fc-agent configuration (docs/host-agent.md). Generated by tools/install-fc-agent.sh.
FC_AGENT_TOKEN=$token
FC_AGENT_LISTEN=$listen
FC_AGENT_BACKEND=$backend
FC_AGENT_DIR=$state_dir
FC_AGENT_FIRECRACKER_BIN=$firecracker
FC_AGENT_KERNEL=$kernel
FC_AGENT_INITRD=$images/initramfs.cpio.gz
FC_AGENT_ROOTFS=$images/rootfs.ext4
FC_AGENT_PUBLIC_HOST=$public_host
ENV
  mv "$env_file.tmp" "$env_file"
fi
chmod 0600 "$env_file"
if [ "$systemd" = 1 ]; then
unit=$root/etc/systemd/system/fc-agent.service
cat > "$unit" <<'UNIT'
[Unit]
Description=Fuse host agent (fc-agent)
Documentation=file:///usr/share/doc/fuse/hosts.md
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/fc-agent/fc-agent.env
ExecStart=/usr/local/bin/fc-agent
# VMs are separate process groups that must outlive an agent restart: stop only the agent.
KillMode=process
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT
chmod 0644 "$unit"
fi
if [ "$start" = 1 ]; then
  systemctl daemon-reload
  systemctl enable --now fc-agent.service
  systemctl --no-pager --lines=0 status fc-agent.service || true
fi
port=${listen##*:}
run="sh -c 'set -a; . /etc/fc-agent/fc-agent.env; set +a; exec /usr/local/bin/fc-agent'"
if [ "$systemd" = 0 ]; then
  how="without a systemd unit; run it (as root, under your own supervisor) with
  $run"
else
  how="as the systemd service fc-agent.service"
fi
cat <<MSG
fc-agent installed ($backend backend) $how

Register this host with the control plane:

  curl -fsS -X POST "$fuse_url/v1/hosts" -H 'content-type: application/json' \\
    -H "authorization: Bearer \$ORCH_AUTH_TOKEN" \\
    -d '{"id":"$host_id","url":"http://$public_host:$port","token":"$token","region":"default"}'
MSG
if [ "$foreground" = 1 ]; then
  echo "install-fc-agent: running fc-agent in the foreground (Ctrl-C stops it)" >&2
  set -a; . "$env_file"; set +a
  exec "$root/usr/local/bin/fc-agent"
fi
