//! The API objects this crate sends to and reads from Firecracker, named and shaped after
//! the definitions of Firecracker's swagger (v1.12, `src/firecracker/swagger/firecracker.yaml`).
//!
//! Invariants: field names and enum values are exactly the swagger's; an optional field is an
//! `Option` that is left out of a request when `None` (Firecracker then applies its default)
//! and reads `null` or a missing field as `None`. Unknown fields in a response are ignored,
//! so a newer Firecracker that adds fields still parses; an unknown enum value does not
//! (a state this crate cannot name is an error, not a guess).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// `BootSource`: the guest kernel, its optional initrd and command line (`PUT /boot-source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// Host path of the kernel image.
    pub kernel_image_path: PathBuf,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// `Drive`: a block device (`PUT /drives/{drive_id}`), virtio-block (`path_on_host`) or
/// vhost-user-block (`socket`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// The drive's id; also the last segment of its path.
    pub drive_id: String,
    /// Whether the guest boots from it.
    pub is_root_device: bool,
    /// Unique id of the boot partition (only for a root device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Caching strategy (default `Unsafe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Whether the guest sees it read-only (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Host path of the backing file (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine (default `Sync`; `Async` needs host kernel > 5.10.51).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Socket of a vhost-user-block backend (instead of `path_on_host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `Drive.cache_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes are not passed to the host.
    Unsafe,
    /// Flushes reach the host's storage.
    Writeback,
}

/// `Drive.io_engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O.
    Sync,
    /// io_uring.
    Async,
}

/// `RateLimiter`: independent bytes/s and ops/s token buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiter {
    /// Bucket whose tokens are bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Bucket whose tokens are operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `TokenBucket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Tokens the bucket holds.
    pub size: u64,
    /// Milliseconds to refill it.
    pub refill_time: u64,
    /// An initial burst beyond `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
}

/// `MachineConfiguration`: vCPUs, memory and their options (`PUT`/`GET /machine-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// Number of vCPUs (1 to 32; 1 or even with SMT).
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (x86 only; default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking, needed for diff snapshots (default off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// A static CPU template (deprecated by Firecracker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Huge pages backing guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// `CpuTemplate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// Firecracker's `C3` template (x86).
    C3,
    /// Firecracker's `T2` template (x86).
    T2,
    /// Firecracker's `T2S` template (x86).
    T2S,
    /// Firecracker's `T2CL` template (x86).
    T2CL,
    /// Firecracker's `T2A` template (x86).
    T2A,
    /// Firecracker's `V1N1` template (aarch64).
    V1N1,
    /// No template: the host CPU's features, as KVM filters them.
    None,
}

/// `MachineConfiguration.huge_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary pages.
    None,
    /// 2 MiB hugetlbfs pages (`mem_size_mib` must then be even).
    #[serde(rename = "2M")]
    Size2M,
}

/// `NetworkInterface`: a virtio-net device on a host tap (`PUT /network-interfaces/{iface_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// The interface's id; also the last segment of its path.
    pub iface_id: String,
    /// The host tap device.
    pub host_dev_name: String,
    /// The guest's MAC address (Firecracker picks none when absent: the guest does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Receive limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `Vsock`: the vsock device and its host-side Unix socket (`PUT /vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// The guest's CID (≥ 3).
    pub guest_cid: u32,
    /// The host-side Unix socket Firecracker listens on (`CONNECT <port>\n` reaches the
    /// guest's port).
    pub uds_path: PathBuf,
    /// Deprecated by Firecracker; leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `InstanceActionInfo` (`PUT /actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Writes the metrics now.
    FlushMetrics,
    /// Boots the configured VM.
    InstanceStart,
    /// Sends Ctrl+Alt+Del to the guest (x86).
    SendCtrlAltDel,
}

/// `Vm`: the VM's run state to set (`PATCH /vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// The state to enter.
    pub state: VmState,
}

/// `Vm.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// vCPUs stopped (the state a snapshot is taken in).
    Paused,
    /// vCPUs running again.
    Resumed,
}

/// `SnapshotCreateParams` (`PUT /snapshot/create`; the VM must be paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// File for the microVM state.
    pub snapshot_path: PathBuf,
    /// File for the guest memory.
    pub mem_file_path: PathBuf,
    /// Full (default) or Diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only memory dirtied since the last snapshot (needs `track_dirty_pages`).
    Diff,
}

/// `SnapshotLoadParams` (`PUT /snapshot/load`, into a fresh process). Exactly one of
/// `mem_backend` and the deprecated `mem_file_path` must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// File holding the microVM state.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated by Firecracker in favour of `mem_backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Track dirty pages after the load, for diff snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Resume the VM once loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Other tap devices for the snapshot's interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
}

/// `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// A file, or a userfaultfd handler.
    pub backend_type: MemoryBackendType,
    /// The memory file, or the handler's Unix socket.
    pub backend_path: PathBuf,
}

/// `MemoryBackend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// `backend_path` is the memory file.
    File,
    /// `backend_path` is the Unix socket of a process serving page faults.
    Uffd,
}

/// `NetworkOverride`: a snapshot's interface on another tap at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The interface in the snapshot.
    pub iface_id: String,
    /// Its new tap device.
    pub host_dev_name: String,
}

/// `InstanceInfo` (`GET /`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The application's name (`Firecracker`).
    pub app_name: String,
    /// The instance id (`--id`).
    pub id: String,
    /// Its run state.
    pub state: InstanceState,
    /// Firecracker's version (`1.12.1`).
    pub vmm_version: String,
}

/// `InstanceInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured (or not) but never started.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

impl InstanceState {
    /// The swagger's name of the state (`Not started`, `Running`, `Paused`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::NotStarted => "Not started",
            InstanceState::Running => "Running",
            InstanceState::Paused => "Paused",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the swagger's name of the state, as callers that knew it as text did.
impl PartialEq<&str> for InstanceState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// `FullVmConfiguration` (`GET /vm/config`): the sections this crate configures. The
/// others (`balloon`, `cpu-config`, `logger`, `metrics`, `mmds-config`, `entropy`) are not
/// modelled and are ignored when parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullVmConfiguration {
    /// The boot source (Firecracker reports an empty kernel path before one is set).
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// All block devices.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// vCPUs and memory.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfiguration>,
    /// All net devices.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
}

/// `Error`: the body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn wire<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    /// Serialises to exactly `want` and reads back to the same value.
    fn round_trip<T>(v: T, want: Value)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        assert_eq!(wire(&v), want);
        assert_eq!(serde_json::from_value::<T>(want).unwrap(), v);
    }

    #[test]
    fn boot_source_fields() {
        round_trip(
            BootSource {
                kernel_image_path: "/k/vmlinux".into(),
                boot_args: None,
                initrd_path: None,
            },
            json!({"kernel_image_path": "/k/vmlinux"}),
        );
        round_trip(
            BootSource {
                kernel_image_path: "/k/vmlinux".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: Some("/k/initrd".into()),
            },
            json!({"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0",
                   "initrd_path": "/k/initrd"}),
        );
    }

    #[test]
    fn drive_fields() {
        round_trip(
            Drive {
                drive_id: "rootfs".into(),
                is_root_device: true,
                partuuid: None,
                cache_type: None,
                is_read_only: Some(false),
                path_on_host: Some("/d/rootfs.ext4".into()),
                rate_limiter: None,
                io_engine: None,
                socket: None,
            },
            json!({"drive_id": "rootfs", "is_root_device": true, "is_read_only": false,
                   "path_on_host": "/d/rootfs.ext4"}),
        );
        let bucket = TokenBucket {
            size: 1000,
            refill_time: 100,
            one_time_burst: Some(10),
        };
        round_trip(
            Drive {
                drive_id: "data".into(),
                is_root_device: false,
                partuuid: Some("0eaa91a0-01".into()),
                cache_type: Some(CacheType::Writeback),
                is_read_only: Some(true),
                path_on_host: Some("/d/data".into()),
                rate_limiter: Some(RateLimiter {
                    bandwidth: Some(bucket.clone()),
                    ops: Some(TokenBucket {
                        one_time_burst: None,
                        ..bucket
                    }),
                }),
                io_engine: Some(IoEngine::Async),
                socket: None,
            },
            json!({"drive_id": "data", "is_root_device": false, "partuuid": "0eaa91a0-01",
                   "cache_type": "Writeback", "is_read_only": true, "path_on_host": "/d/data",
                   "rate_limiter": {
                       "bandwidth": {"size": 1000, "refill_time": 100, "one_time_burst": 10},
                       "ops": {"size": 1000, "refill_time": 100}},
                   "io_engine": "Async"}),
        );
        round_trip(
            Drive {
                drive_id: "vu".into(),
                is_root_device: false,
                partuuid: None,
                cache_type: Some(CacheType::Unsafe),
                is_read_only: None,
                path_on_host: None,
                rate_limiter: None,
                io_engine: Some(IoEngine::Sync),
                socket: Some("/run/vu.sock".into()),
            },
            json!({"drive_id": "vu", "is_root_device": false, "cache_type": "Unsafe",
                   "io_engine": "Sync", "socket": "/run/vu.sock"}),
        );
    }

    #[test]
    fn machine_configuration_fields() {
        round_trip(
            MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 256,
                smt: None,
                track_dirty_pages: None,
                cpu_template: None,
                huge_pages: None,
            },
            json!({"vcpu_count": 2, "mem_size_mib": 256}),
        );
        round_trip(
            MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 256,
                smt: Some(true),
                track_dirty_pages: Some(true),
                cpu_template: Some(CpuTemplate::T2CL),
                huge_pages: Some(HugePages::Size2M),
            },
            json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": true,
                   "track_dirty_pages": true, "cpu_template": "T2CL", "huge_pages": "2M"}),
        );
        let names: Vec<Value> = [
            CpuTemplate::C3,
            CpuTemplate::T2,
            CpuTemplate::T2S,
            CpuTemplate::T2CL,
            CpuTemplate::T2A,
            CpuTemplate::V1N1,
            CpuTemplate::None,
        ]
        .iter()
        .map(wire)
        .collect();
        assert_eq!(
            names,
            ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"].map(Value::from)
        );
        assert_eq!(wire(&HugePages::None), "None");
    }

    #[test]
    fn network_interface_fields() {
        round_trip(
            NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            },
            json!({"iface_id": "eth0", "host_dev_name": "tap0"}),
        );
        let limit = RateLimiter {
            bandwidth: None,
            ops: Some(TokenBucket {
                size: 5,
                refill_time: 1,
                one_time_burst: None,
            }),
        };
        round_trip(
            NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:0a:c8:00:02".into()),
                rx_rate_limiter: Some(limit.clone()),
                tx_rate_limiter: Some(limit),
            },
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:0a:c8:00:02",
                   "rx_rate_limiter": {"ops": {"size": 5, "refill_time": 1}},
                   "tx_rate_limiter": {"ops": {"size": 5, "refill_time": 1}}}),
        );
    }

    #[test]
    fn vsock_fields() {
        round_trip(
            Vsock {
                guest_cid: 3,
                uds_path: "/v/guest.sock".into(),
                vsock_id: None,
            },
            json!({"guest_cid": 3, "uds_path": "/v/guest.sock"}),
        );
        round_trip(
            Vsock {
                guest_cid: 7,
                uds_path: "/v/g.sock".into(),
                vsock_id: Some("vsock0".into()),
            },
            json!({"guest_cid": 7, "uds_path": "/v/g.sock", "vsock_id": "vsock0"}),
        );
    }

    #[test]
    fn action_and_vm_state_values() {
        for (action, name) in [
            (ActionType::FlushMetrics, "FlushMetrics"),
            (ActionType::InstanceStart, "InstanceStart"),
            (ActionType::SendCtrlAltDel, "SendCtrlAltDel"),
        ] {
            round_trip(
                InstanceActionInfo {
                    action_type: action,
                },
                json!({"action_type": name}),
            );
        }
        round_trip(
            Vm {
                state: VmState::Paused,
            },
            json!({"state": "Paused"}),
        );
        round_trip(
            Vm {
                state: VmState::Resumed,
            },
            json!({"state": "Resumed"}),
        );
    }

    #[test]
    fn snapshot_create_fields() {
        round_trip(
            SnapshotCreateParams {
                snapshot_path: "/s/vm.state".into(),
                mem_file_path: "/s/vm.mem".into(),
                snapshot_type: Some(SnapshotType::Full),
            },
            json!({"snapshot_path": "/s/vm.state", "mem_file_path": "/s/vm.mem",
                   "snapshot_type": "Full"}),
        );
        round_trip(
            SnapshotCreateParams {
                snapshot_path: "/s/vm.state".into(),
                mem_file_path: "/s/vm.mem".into(),
                snapshot_type: None,
            },
            json!({"snapshot_path": "/s/vm.state", "mem_file_path": "/s/vm.mem"}),
        );
        assert_eq!(wire(&SnapshotType::Diff), "Diff");
    }

    #[test]
    fn snapshot_load_fields() {
        round_trip(
            SnapshotLoadParams {
                snapshot_path: "/s/vm.state".into(),
                mem_backend: Some(MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: "/s/vm.mem".into(),
                }),
                mem_file_path: None,
                enable_diff_snapshots: None,
                resume_vm: Some(true),
                network_overrides: None,
            },
            json!({"snapshot_path": "/s/vm.state",
                   "mem_backend": {"backend_type": "File", "backend_path": "/s/vm.mem"},
                   "resume_vm": true}),
        );
        round_trip(
            SnapshotLoadParams {
                snapshot_path: "/s/vm.state".into(),
                mem_backend: Some(MemoryBackend {
                    backend_type: MemoryBackendType::Uffd,
                    backend_path: "/run/uffd.sock".into(),
                }),
                mem_file_path: None,
                enable_diff_snapshots: Some(true),
                resume_vm: Some(false),
                network_overrides: Some(vec![NetworkOverride {
                    iface_id: "eth0".into(),
                    host_dev_name: "tap9".into(),
                }]),
            },
            json!({"snapshot_path": "/s/vm.state",
                   "mem_backend": {"backend_type": "Uffd", "backend_path": "/run/uffd.sock"},
                   "enable_diff_snapshots": true, "resume_vm": false,
                   "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}]}),
        );
        round_trip(
            SnapshotLoadParams {
                snapshot_path: "/s/vm.state".into(),
                mem_backend: None,
                mem_file_path: Some("/s/vm.mem".into()),
                enable_diff_snapshots: None,
                resume_vm: None,
                network_overrides: None,
            },
            json!({"snapshot_path": "/s/vm.state", "mem_file_path": "/s/vm.mem"}),
        );
    }

    #[test]
    fn instance_info_parses_every_state() {
        for (name, state) in [
            ("Not started", InstanceState::NotStarted),
            ("Running", InstanceState::Running),
            ("Paused", InstanceState::Paused),
        ] {
            // As Firecracker v1.12.1 answers `GET /`.
            let body = format!(
                r#"{{"id":"anonymous-instance","state":"{name}","vmm_version":"1.12.1","app_name":"Firecracker"}}"#
            );
            let info: InstanceInfo = serde_json::from_str(&body).unwrap();
            assert_eq!(
                info,
                InstanceInfo {
                    app_name: "Firecracker".into(),
                    id: "anonymous-instance".into(),
                    state,
                    vmm_version: "1.12.1".into(),
                }
            );
            assert_eq!(state.to_string(), name);
            assert!(state == name);
        }
        for bad in [
            r#"{"id":"x","state":"NotStarted","vmm_version":"1","app_name":"F"}"#,
            r#"{"id":"x","state":"running","vmm_version":"1","app_name":"F"}"#,
            r#"{"id":"x","vmm_version":"1","app_name":"F"}"#,
        ] {
            assert!(serde_json::from_str::<InstanceInfo>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn full_vm_configuration_parses_firecrackers_answers() {
        // Firecracker v1.12.1's `GET /vm/config` before any configuration...
        let fresh = r#"{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"entropy":null}"#;
        let cfg: FullVmConfiguration = serde_json::from_str(fresh).unwrap();
        assert!(cfg.drives.is_empty() && cfg.network_interfaces.is_empty());
        assert_eq!(cfg.vsock, None);
        assert_eq!(
            cfg.boot_source.unwrap().kernel_image_path,
            PathBuf::from("")
        );
        assert_eq!(
            cfg.machine_config,
            Some(MachineConfiguration {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: Some(false),
                track_dirty_pages: Some(false),
                cpu_template: None,
                huge_pages: Some(HugePages::None),
            })
        );
        // ...and after a drive, boot source, vsock and machine config were put.
        let configured = r#"{"balloon":null,"drives":[{"drive_id":"rootfs","partuuid":null,"is_root_device":true,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"/d/disk","rate_limiter":null,"io_engine":"Sync","socket":null}],"boot-source":{"kernel_image_path":"/g/tiny.elf","initrd_path":null,"boot_args":"console=ttyS0"},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":64,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":null,"rx_rate_limiter":null,"tx_rate_limiter":null}],"vsock":{"guest_cid":3,"uds_path":"/v/g.sock"},"entropy":null}"#;
        let cfg: FullVmConfiguration = serde_json::from_str(configured).unwrap();
        assert_eq!(
            cfg.drives,
            [Drive {
                drive_id: "rootfs".into(),
                is_root_device: true,
                partuuid: None,
                cache_type: Some(CacheType::Unsafe),
                is_read_only: Some(false),
                path_on_host: Some("/d/disk".into()),
                rate_limiter: None,
                io_engine: Some(IoEngine::Sync),
                socket: None,
            }]
        );
        assert_eq!(
            cfg.boot_source,
            Some(BootSource {
                kernel_image_path: "/g/tiny.elf".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: None,
            })
        );
        assert_eq!(cfg.network_interfaces[0].host_dev_name, "tap0");
        assert_eq!(cfg.network_interfaces[0].guest_mac, None);
        assert_eq!(
            cfg.vsock,
            Some(Vsock {
                guest_cid: 3,
                uds_path: "/v/g.sock".into(),
                vsock_id: None,
            })
        );
        // Section names are the swagger's, with hyphens.
        let back = wire(&cfg);
        for key in [
            "boot-source",
            "machine-config",
            "network-interfaces",
            "drives",
        ] {
            assert!(back.get(key).is_some(), "{key}: {back}");
        }
    }

    #[test]
    fn error_body_parses() {
        let e: ErrorBody =
            serde_json::from_str(r#"{"fault_message":"Invalid request method and/or path"}"#)
                .unwrap();
        assert_eq!(
            e.fault_message.as_deref(),
            Some("Invalid request method and/or path")
        );
        let e: ErrorBody = serde_json::from_str("{}").unwrap();
        assert_eq!(e.fault_message, None);
        round_trip(
            ErrorBody {
                fault_message: Some("x".into()),
            },
            json!({"fault_message": "x"}),
        );
    }
}
