//! The `process` backend's veth pair, as one `RTM_NEWLINK`: the peer created directly in
//! the VM's namespace, and one TX and one RX queue on each end. Both ends start down: a
//! veth up without carrier (its peer still down) would make the next netlink look at it
//! wait for an RCU grace period under the RTNL lock (see `super::ifindex`).
//!
//! Why not nlink's `VethLink`: it leaves the queue counts to the kernel, which then
//! allocates one queue per CPU and trims each end to one after registering it
//! (`veth_init_queues`), and that trim is a `synchronize_net()` while the RTNL lock is
//! held. Profiling `fc-agent-bench` showed every VM's netlink work (and every new
//! namespace's loopback) queued behind those RCU grace periods. Asking for one queue up
//! front skips the trim. The attributes are nlink's own, written through its public
//! `LinkConfig` seam.

use nlink::netlink::link::LinkConfig;
use nlink::netlink::types::link::{IfInfoMsg, IflaAttr, IflaInfo};
use nlink::netlink::MessageBuilder;
use std::os::fd::{AsRawFd, OwnedFd};

/// `VETH_INFO_PEER` (`include/uapi/linux/veth.h`).
const VETH_INFO_PEER: u16 = 1;

/// A veth pair `name` (here) / `peer` (in the namespace `peer_ns` names).
pub struct Veth {
    /// Host side.
    pub name: String,
    /// VM side.
    pub peer: String,
    /// The VM's namespace (an open nsfs file).
    pub peer_ns: OwnedFd,
}

fn one_queue(b: &mut MessageBuilder) {
    b.append_attr_u32(IflaAttr::NumTxQueues as u16, 1);
    b.append_attr_u32(IflaAttr::NumRxQueues as u16, 1);
}

impl LinkConfig for Veth {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &str {
        "veth"
    }

    fn peer_name(&self) -> Option<&str> {
        Some(&self.peer)
    }

    fn write_to(&self, b: &mut MessageBuilder, _parent_index: Option<u32>) {
        b.append_attr_str(IflaAttr::Ifname as u16, &self.name);
        one_queue(b);
        let linkinfo = b.nest_start(IflaAttr::Linkinfo as u16);
        b.append_attr_str(IflaInfo::Kind as u16, "veth");
        let data = b.nest_start(IflaInfo::Data as u16);
        let peer = b.nest_start(VETH_INFO_PEER);
        b.append(&IfInfoMsg::new());
        b.append_attr_str(IflaAttr::Ifname as u16, &self.peer);
        one_queue(b);
        b.append_attr_u32(IflaAttr::NetNsFd as u16, self.peer_ns.as_raw_fd() as u32);
        b.nest_end(peer);
        b.nest_end(data);
        b.nest_end(linkinfo);
    }
}
