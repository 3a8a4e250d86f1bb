//! [`Control`]: the calls of one running Firecracker's API, by its socket. Each typed call
//! sends one whole API object ([`crate::models`]) to its endpoint; the convenience methods
//! the host agent uses build those objects from a few arguments.
//!
//! Invariants: a call's path is derived from its object (`/drives/{drive_id}`,
//! `/network-interfaces/{iface_id}`), so the id in the path and in the body never disagree.

use crate::api::Client;
use crate::models::{
    ActionType, BootSource, Drive, FullVmConfiguration, InstanceActionInfo, InstanceInfo,
    InstanceState, MachineConfiguration, MemoryBackend, MemoryBackendType, NetworkInterface,
    SnapshotCreateParams, SnapshotLoadParams, SnapshotType, Vm, VmState, Vsock,
};
use crate::{api_socket, FcError};
use std::path::Path;

/// The API of a running Firecracker, by its socket: also for a process started by another
/// program run (an `fc-agent` that restarted and re-adopted its VMs).
#[derive(Debug, Clone)]
pub struct Control {
    api: Client,
}

impl Control {
    /// The API of the Firecracker whose VM directory is `dir`.
    pub fn attach(dir: &Path) -> Control {
        Control::with_client(Client::new(api_socket(dir)))
    }

    /// The API behind `api` (the spawn's probe uses one with a short timeout).
    pub(crate) fn with_client(api: Client) -> Control {
        Control { api }
    }

    // Typed calls: one API object each, named after the swagger's operations.

    /// `GET /`: the instance's id, state and Firecracker version.
    pub async fn describe_instance(&self) -> Result<InstanceInfo, FcError> {
        Ok(self.api.get("/").await?)
    }

    /// `GET /machine-config`.
    pub async fn get_machine_config(&self) -> Result<MachineConfiguration, FcError> {
        Ok(self.api.get("/machine-config").await?)
    }

    /// `PUT /machine-config` (before start).
    pub async fn put_machine_config(&self, config: &MachineConfiguration) -> Result<(), FcError> {
        Ok(self.api.put("/machine-config", config).await?)
    }

    /// `PUT /boot-source` (before start).
    pub async fn put_boot_source(&self, source: &BootSource) -> Result<(), FcError> {
        Ok(self.api.put("/boot-source", source).await?)
    }

    /// `PUT /drives/{drive_id}` (before start).
    pub async fn put_drive(&self, drive: &Drive) -> Result<(), FcError> {
        let path = format!("/drives/{}", drive.drive_id);
        Ok(self.api.put(&path, drive).await?)
    }

    /// `PUT /network-interfaces/{iface_id}` (before start).
    pub async fn put_network_interface(&self, iface: &NetworkInterface) -> Result<(), FcError> {
        let path = format!("/network-interfaces/{}", iface.iface_id);
        Ok(self.api.put(&path, iface).await?)
    }

    /// `PUT /vsock` (before start).
    pub async fn put_vsock(&self, vsock: &Vsock) -> Result<(), FcError> {
        Ok(self.api.put("/vsock", vsock).await?)
    }

    /// `PUT /actions`.
    pub async fn put_action(&self, action: &InstanceActionInfo) -> Result<(), FcError> {
        Ok(self.api.put("/actions", action).await?)
    }

    /// `PATCH /vm`: pause or resume.
    pub async fn patch_vm(&self, vm: &Vm) -> Result<(), FcError> {
        Ok(self.api.patch("/vm", vm).await?)
    }

    /// `PUT /snapshot/create` (the VM must be paused).
    pub async fn put_snapshot_create(&self, params: &SnapshotCreateParams) -> Result<(), FcError> {
        Ok(self.api.put("/snapshot/create", params).await?)
    }

    /// `PUT /snapshot/load` (into a fresh process, before any other configuration).
    pub async fn put_snapshot_load(&self, params: &SnapshotLoadParams) -> Result<(), FcError> {
        Ok(self.api.put("/snapshot/load", params).await?)
    }

    /// `GET /vm/config`: the configuration Firecracker holds.
    pub async fn config(&self) -> Result<FullVmConfiguration, FcError> {
        Ok(self.api.get("/vm/config").await?)
    }

    // Conveniences for the host agent.

    /// The instance state (`GET /`).
    pub async fn state(&self) -> Result<InstanceState, FcError> {
        Ok(self.describe_instance().await?.state)
    }

    /// `PUT /machine-config` with `vcpus` and `mem_mib`, other options at their defaults.
    pub async fn machine_config(&self, vcpus: u32, mem_mib: u64) -> Result<(), FcError> {
        self.put_machine_config(&MachineConfiguration {
            vcpu_count: vcpus,
            mem_size_mib: mem_mib,
            smt: None,
            track_dirty_pages: None,
            cpu_template: None,
            huge_pages: None,
        })
        .await
    }

    /// `PUT /boot-source`.
    pub async fn boot_source(
        &self,
        kernel: &Path,
        initrd: Option<&Path>,
        boot_args: &str,
    ) -> Result<(), FcError> {
        self.put_boot_source(&BootSource {
            kernel_image_path: kernel.to_owned(),
            boot_args: Some(boot_args.to_owned()),
            initrd_path: initrd.map(Path::to_owned),
        })
        .await
    }

    /// `PUT /drives/{id}`: a virtio-block drive backed by the file `path`.
    pub async fn drive(
        &self,
        id: &str,
        path: &Path,
        root: bool,
        read_only: bool,
    ) -> Result<(), FcError> {
        self.put_drive(&Drive {
            drive_id: id.to_owned(),
            is_root_device: root,
            partuuid: None,
            cache_type: None,
            is_read_only: Some(read_only),
            path_on_host: Some(path.to_owned()),
            rate_limiter: None,
            io_engine: None,
            socket: None,
        })
        .await
    }

    /// `PUT /network-interfaces/{id}` on a tap device.
    pub async fn network_interface(
        &self,
        id: &str,
        tap: &str,
        mac: Option<&str>,
    ) -> Result<(), FcError> {
        self.put_network_interface(&NetworkInterface {
            iface_id: id.to_owned(),
            host_dev_name: tap.to_owned(),
            guest_mac: mac.map(str::to_owned),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        })
        .await
    }

    /// `PUT /vsock` with its host-side Unix socket.
    pub async fn vsock(&self, guest_cid: u32, uds: &Path) -> Result<(), FcError> {
        self.put_vsock(&Vsock {
            guest_cid,
            uds_path: uds.to_owned(),
            vsock_id: None,
        })
        .await
    }

    /// `PUT /actions` InstanceStart.
    pub async fn start(&self) -> Result<(), FcError> {
        self.put_action(&InstanceActionInfo {
            action_type: ActionType::InstanceStart,
        })
        .await
    }

    /// `PATCH /vm` Paused.
    pub async fn pause(&self) -> Result<(), FcError> {
        self.patch_vm(&Vm {
            state: VmState::Paused,
        })
        .await
    }

    /// `PATCH /vm` Resumed.
    pub async fn resume(&self) -> Result<(), FcError> {
        self.patch_vm(&Vm {
            state: VmState::Resumed,
        })
        .await
    }

    /// `PUT /snapshot/create`, full (VM state and memory). The VM must be paused.
    pub async fn snapshot_create(&self, state: &Path, mem: &Path) -> Result<(), FcError> {
        self.put_snapshot_create(&SnapshotCreateParams {
            snapshot_path: state.to_owned(),
            mem_file_path: mem.to_owned(),
            snapshot_type: Some(SnapshotType::Full),
        })
        .await
    }

    /// `PUT /snapshot/load` from a state file and a memory file, into a fresh process
    /// (before any other configuration); `resume` runs the VM once loaded.
    pub async fn snapshot_load(
        &self,
        state: &Path,
        mem: &Path,
        resume: bool,
    ) -> Result<(), FcError> {
        self.snapshot_load_on(state, mem, resume, &[]).await
    }

    /// [`Control::snapshot_load`] with the snapshot's network interfaces on other taps
    /// (`(iface_id, tap)`: `network_overrides`, Firecracker ≥ 1.12), for a snapshot loaded
    /// as another VM or on another host.
    pub async fn snapshot_load_on(
        &self,
        state: &Path,
        mem: &Path,
        resume: bool,
        taps: &[(&str, &str)],
    ) -> Result<(), FcError> {
        let overrides: Vec<crate::models::NetworkOverride> = taps
            .iter()
            .map(|(iface, tap)| crate::models::NetworkOverride {
                iface_id: (*iface).to_owned(),
                host_dev_name: (*tap).to_owned(),
            })
            .collect();
        self.put_snapshot_load(&SnapshotLoadParams {
            snapshot_path: state.to_owned(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: mem.to_owned(),
            }),
            mem_file_path: None,
            enable_diff_snapshots: None,
            resume_vm: Some(resume),
            network_overrides: (!overrides.is_empty()).then_some(overrides),
        })
        .await
    }
}
