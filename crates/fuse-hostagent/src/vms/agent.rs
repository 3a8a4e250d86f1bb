//! What the guest's supervisor says about a VM's agent (`agent_running`, `agent_restarts`
//! on the VM list), asked of every running VM's guest at once when the list is read, so
//! the control plane sees an agent that crash-loops after its start.

use super::Vms;
use fuse_guest::proto::Op;
use fuse_types::hostagent::{AgentVm, HostVmState};
use std::time::Duration;

/// How long one guest may take to answer; a guest that does not leaves the fields absent.
const ASK_LIMIT: Duration = Duration::from_secs(2);

impl Vms {
    /// Fills in `agent_running` and `agent_restarts` of the running VMs in `list`.
    pub async fn observe_agents(&self, list: &mut [AgentVm]) {
        let asks = list
            .iter_mut()
            .filter(|v| v.state == HostVmState::Running)
            .map(|v| async move {
                let Ok(vm) = self.get(&v.vm_id) else {
                    return;
                };
                if let Ok(lines) = vm.guest(Op::Health, ASK_LIMIT).await {
                    if let Some(h) = lines.last() {
                        v.agent_running = h.agent_running;
                        v.agent_restarts = h.agent_restarts;
                    }
                }
            });
        futures_util::future::join_all(asks).await;
    }
}
