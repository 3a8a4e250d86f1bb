//! A VM's guest ports after its create: where the tunnel route connects
//! ([`Vms::tunnel_target`]) and a runtime `expose` ([`Vms::expose`]), which adds a host-port
//! forward to a running VM. Host ports are handed out under the same lock as a create's,
//! so a port is never given twice.

use super::{write_meta, VmError, Vms};
use fuse_types::hostagent::{HostEndpoint, PortExpose};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

impl Vms {
    /// The address of `port` in the VM's guest: its own address on its link, or for a
    /// `process` VM on a host without per-VM networking the host's loopback (it shares the
    /// host's network).
    pub fn tunnel_target(&self, id: &str, port: u16) -> Result<SocketAddr, VmError> {
        if port == 0 {
            return Err(VmError::Invalid("port must be 1-65535".into()));
        }
        let vm = self.get(id)?;
        if vm.meta.read().paused.is_some() {
            return Err(VmError::Conflict(format!(
                "vm {id} is paused; resume it first"
            )));
        }
        let ip = match &vm.meta.read().net {
            Some(n) => IpAddr::V4(n.guest_ip),
            None if self.backend.capabilities().netns => IpAddr::V4(Ipv4Addr::LOCALHOST),
            None => {
                return Err(VmError::Invalid(format!(
                    "vm {id} has no network on this host (per-VM networking is off)"
                )))
            }
        };
        Ok(SocketAddr::new(ip, port))
    }

    /// Publishes one more guest port of a running VM on a host port; idempotent (the same
    /// port and protocol again answers the forward made the first time, and `false`).
    pub async fn expose(&self, id: &str, e: &PortExpose) -> Result<(HostEndpoint, bool), VmError> {
        if e.port == 0 {
            return Err(VmError::Invalid("port must be 1-65535".into()));
        }
        let vm = self.get(id)?;
        let (Some(_), Some(net)) = (self.opts.pool, &self.opts.net) else {
            return Err(VmError::Invalid(
                "expose needs per-VM networking, which is off on this host".into(),
            ));
        };
        let endpoint = |x: &crate::net::Exposed| HostEndpoint {
            port: x.port,
            protocol: x.protocol,
            host_port: x.host_port,
            address: format!("{}:{}", self.opts.public_host, x.host_port),
        };
        // The create lock: host ports are counted over every VM and pending create.
        let _g = self.creating.lock().await;
        let _life = vm.lifecycle.lock().await;
        let info = vm
            .meta
            .read()
            .net
            .clone()
            .ok_or_else(|| VmError::Invalid(format!("vm {id} has no network")))?;
        if let Some(x) = info
            .exposed
            .iter()
            .find(|x| x.port == e.port && x.protocol == e.protocol)
        {
            return Ok((endpoint(x), false));
        }
        let mut used: std::collections::HashSet<u16> = std::collections::HashSet::new();
        for v in self.map.read().values() {
            if let Some(n) = &v.meta.read().net {
                used.extend(n.host_ports());
            }
        }
        for p in self.pending.lock().values() {
            used.extend(p.ports.iter().copied());
        }
        let (lo, hi) = self.opts.forward_ports;
        let host_port = (lo..=hi)
            .find(|p| !used.contains(p))
            .ok_or_else(|| VmError::Busy("no forward port left".into()))?;
        let x = crate::net::Exposed {
            port: e.port,
            protocol: e.protocol,
            host_port,
        };
        net.expose_add(id, &info, x)
            .await
            .map_err(VmError::Network)?;
        let meta = {
            let mut m = vm.meta.write();
            if let Some(n) = m.net.as_mut() {
                n.exposed.push(x);
            }
            m.clone()
        };
        write_meta(&vm.dir, &meta)?;
        tracing::info!(vm_id = %id, port = e.port, protocol = e.protocol.as_str(), host_port, "port published");
        Ok((endpoint(&x), true))
    }
}
