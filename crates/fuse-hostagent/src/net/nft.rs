//! The agent's nftables table: its layout, the per-VM objects, and reading back what a
//! table holds for the start-up reclaim. Pure builders and parsers; the one socket they are
//! committed through belongs to [`super::Net`].
//!
//! One table per agent, `ip fuse_<tag>` (the tag is the agent's, so two agents on one
//! machine never touch each other's table):
//! - set `vms` (`ipv4_addr`): the guest address of every VM; `postrouting` (nat, srcnat)
//!   masquerades `ip saddr @vms`, the VM's egress;
//! - verdict maps `forwards` (TCP) and `udp_forwards` (UDP) (`inet_service : verdict`):
//!   host port → `goto <vm chain>`; `prerouting` and `output` (nat, dstnat) send TCP and UDP
//!   to a local address (`fib daddr type local`, iptables' `--dst-type LOCAL`) through them;
//! - one regular chain per VM with a forward, named by the VM's key, holding one
//!   `<proto> dport <host port> dnat to <guest>:<port>` per forward (the agent port's and
//!   each exposed port's).
//!
//! Every per-VM element, chain and rule names its VM: element and rule comments are
//! `<key> <vm id>` (cut to the kernel's 127 bytes), the chain is named `<key>` with the VM
//! id as its comment. The key is the VM's device name ([`super::dev_name`]), unique per
//! agent and always short. A VM's create adds its objects in one transaction and its
//! destroy removes them in one.

use nlink::netlink::nftables::{
    BaseChain, Chain, ChainName, Family, FibFlags, NatHook, PacketField, Priority, Rule, Set,
    SetElement, SetElementData, SetKeyType, Transaction, Verdict,
};
use nlink::netlink::types::route::RouteType;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The family of the agent's table: the VM pool is IPv4.
pub const FAMILY: Family = Family::Ip;
/// The set of VM addresses that are masqueraded.
pub const VMS_SET: &str = "vms";
/// The verdict map of TCP host-port forwards.
pub const FORWARDS_MAP: &str = "forwards";
/// The verdict map of UDP host-port forwards.
pub const UDP_FORWARDS_MAP: &str = "udp_forwards";
/// The table's base chains (everything else in it is a VM's chain).
pub const BASE_CHAINS: [&str; 3] = ["prerouting", "output", "postrouting"];
/// The kernel's limit on a comment (`NFT_USERDATA_MAXLEN` less libnftnl's framing).
const COMMENT_MAX: usize = 127;

/// The table of the agent with this tag.
pub fn table_name(tag: &str) -> String {
    format!("fuse_{tag}")
}

/// What of one VM lives in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNft {
    /// The VM's key: its device name, the name of its chain and the first word of its
    /// comments.
    pub key: String,
    /// The VM id, for the comments.
    pub vm_id: String,
    /// Its guest address (masqueraded).
    pub guest_ip: Ipv4Addr,
    /// Host ports forwarded to it (the agent port first, then the exposed ports).
    pub forwards: Vec<Forward>,
}

/// One host port forwarded to a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
    /// Transport.
    pub protocol: fuse_types::Protocol,
}

impl Forward {
    fn map(&self) -> &'static str {
        match self.protocol {
            fuse_types::Protocol::Tcp => FORWARDS_MAP,
            fuse_types::Protocol::Udp => UDP_FORWARDS_MAP,
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl VmNft {
    /// The comment on its elements and rules: `<key> <vm id>`, cut to the kernel's limit
    /// (the key comes first, so it always survives).
    pub fn comment(&self) -> String {
        Self::comment_of(&self.key, &self.vm_id)
    }

    /// The comment of a VM's objects with this key and id (also the egress table's).
    pub fn comment_of(key: &str, vm_id: &str) -> String {
        cut(&format!("{key} {vm_id}"), COMMENT_MAX).to_owned()
    }

    fn chain_name(&self) -> Result<ChainName, nlink::Error> {
        ChainName::new(self.key.clone())
    }

    /// Queues the creation of its objects: the address element, and for a forward its
    /// chain with the `dnat` rule, then the map element that jumps to it (in that order:
    /// the element refers to the chain).
    pub fn add(&self, table: &str, tx: Transaction) -> Result<Transaction, nlink::Error> {
        let c = self.comment();
        let mut tx = tx.add_set_elements(
            &vms_set(table),
            &[SetElement::ipv4(self.guest_ip).with_comment(c.clone())],
        );
        if !self.forwards.is_empty() {
            tx = tx.add_chain(
                Chain::new(table, self.chain_name()?)?
                    .family(FAMILY)
                    .comment(cut(&self.vm_id, COMMENT_MAX)),
            );
            for f in &self.forwards {
                let rule = Rule::new(table, &self.key).family(FAMILY);
                let rule = match f.protocol {
                    fuse_types::Protocol::Tcp => rule.match_tcp_dport(f.host_port),
                    fuse_types::Protocol::Udp => rule.match_udp_dport(f.host_port),
                };
                tx = tx.add_rule(rule.dnat(self.guest_ip, Some(f.guest_port)).comment(&c));
            }
            // The map elements last: they refer to the chain.
            for f in &self.forwards {
                tx = tx.add_set_elements(
                    &forwards_map(table, f.map()),
                    &[SetElement::port(f.host_port)
                        .verdict(Verdict::GotoTo(self.chain_name()?))
                        .with_comment(c.clone())],
                );
            }
        }
        Ok(tx)
    }

    /// Queues one more forward of a VM whose objects exist (a runtime `expose`): its rule,
    /// in the VM's chain (made here when the VM had no forward yet), then its map element.
    pub fn add_forward(
        &self,
        table: &str,
        tx: Transaction,
        f: &Forward,
    ) -> Result<Transaction, nlink::Error> {
        let c = self.comment();
        let mut tx = tx;
        if self.forwards.is_empty() {
            tx = tx.add_chain(
                Chain::new(table, self.chain_name()?)?
                    .family(FAMILY)
                    .comment(cut(&self.vm_id, COMMENT_MAX)),
            );
        }
        let rule = Rule::new(table, &self.key).family(FAMILY);
        let rule = match f.protocol {
            fuse_types::Protocol::Tcp => rule.match_tcp_dport(f.host_port),
            fuse_types::Protocol::Udp => rule.match_udp_dport(f.host_port),
        };
        tx = tx.add_rule(rule.dnat(self.guest_ip, Some(f.guest_port)).comment(&c));
        Ok(tx.add_set_elements(
            &forwards_map(table, f.map()),
            &[SetElement::port(f.host_port)
                .verdict(Verdict::GotoTo(self.chain_name()?))
                .with_comment(c)],
        ))
    }

    /// Queues the removal of its objects (the map elements before the chain they refer to).
    pub fn remove(&self, table: &str, tx: Transaction) -> Transaction {
        let mut tx = tx.del_set_elements(&vms_set(table), &[SetElement::ipv4(self.guest_ip)]);
        if !self.forwards.is_empty() {
            for f in &self.forwards {
                tx = tx.del_set_elements(
                    &forwards_map(table, f.map()),
                    &[SetElement::port(f.host_port)],
                );
            }
            tx = tx
                .flush_chain(table, &self.key, FAMILY)
                .del_chain(table, &self.key, FAMILY);
        }
        tx
    }

    /// Its objects' removals one transaction each, for when some are already gone.
    pub fn remove_each(&self, table: &str, new: impl Fn() -> Transaction) -> Vec<Transaction> {
        let mut v =
            vec![new().del_set_elements(&vms_set(table), &[SetElement::ipv4(self.guest_ip)])];
        if !self.forwards.is_empty() {
            for f in &self.forwards {
                v.push(new().del_set_elements(
                    &forwards_map(table, f.map()),
                    &[SetElement::port(f.host_port)],
                ));
            }
            v.push(
                new()
                    .flush_chain(table, &self.key, FAMILY)
                    .del_chain(table, &self.key, FAMILY),
            );
        }
        v
    }
}

/// The set of VM addresses.
pub fn vms_set(table: &str) -> Set {
    Set::new(table, VMS_SET)
        .family(FAMILY)
        .key_type(SetKeyType::Ipv4Addr)
}

/// A verdict map of forwards ([`FORWARDS_MAP`] or [`UDP_FORWARDS_MAP`]).
pub fn forwards_map(table: &str, name: &str) -> Set {
    Set::new(table, name)
        .family(FAMILY)
        .key_type(SetKeyType::InetService)
        .vmap()
}

/// Queues the whole table: replaced (when `exists`) by the layout with exactly the `live`
/// VMs' objects. One transaction, so the NAT of a running VM never lapses.
pub fn table_create(
    tag: &str,
    exists: bool,
    live: &[VmNft],
    mut tx: Transaction,
) -> Result<Transaction, nlink::Error> {
    let table = table_name(tag);
    let t = table.as_str();
    if exists {
        tx = tx.del_table(t, FAMILY);
    }
    let base = |name: &str, hook: NatHook, prio: Priority| -> Result<Chain, nlink::Error> {
        Ok(Chain::new(t, name)?
            .family(FAMILY)
            .base(BaseChain::nat(hook, prio)))
    };
    // A forward is for traffic to this host only (not to whatever it routes).
    let forward = |chain: &str, field: PacketField, map: &str| {
        Rule::new(t, chain)
            .family(FAMILY)
            .match_fib_type(FibFlags::DADDR, RouteType::Local)
            .vmap(field, map)
    };
    tx = tx
        .add_table_with_comment(t, FAMILY, 0, Some(&format!("fc-agent {tag}")))
        .add_set(vms_set(t))
        .add_set(forwards_map(t, FORWARDS_MAP))
        .add_set(forwards_map(t, UDP_FORWARDS_MAP))
        .add_chain(base("prerouting", NatHook::Prerouting, Priority::DstNat)?)
        .add_chain(base("output", NatHook::Output, Priority::DstNat)?)
        .add_chain(base("postrouting", NatHook::Postrouting, Priority::SrcNat)?);
    for chain in ["prerouting", "output"] {
        tx = tx
            .add_rule(forward(chain, PacketField::TcpDport, FORWARDS_MAP))
            .add_rule(forward(chain, PacketField::UdpDport, UDP_FORWARDS_MAP));
    }
    tx = tx.add_rule(
        Rule::new(t, "postrouting")
            .family(FAMILY)
            .match_in_set(PacketField::Ip4Saddr, VMS_SET)
            .masquerade(),
    );
    for vm in live {
        tx = vm.add(t, tx)?;
    }
    Ok(tx)
}

/// The VM key of a comment (its first word).
pub fn key_of(comment: &str) -> &str {
    comment.split_whitespace().next().unwrap_or("")
}

/// What a table holds, by VM key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dump {
    /// Whether the table exists at all.
    pub exists: bool,
    /// The key of each element of `vms` and the forward maps (empty for one without a
    /// comment).
    pub element_keys: Vec<String>,
    /// The chains that are not base chains.
    pub vm_chains: Vec<String>,
}

impl Dump {
    /// Reads the keys from dumped elements and chain names.
    pub fn new<'a>(
        elements: impl IntoIterator<Item = &'a SetElement>,
        chains: impl IntoIterator<Item = &'a str>,
    ) -> Dump {
        Dump {
            exists: true,
            element_keys: elements
                .into_iter()
                .map(|e| key_of(e.comment().unwrap_or("")).to_owned())
                .collect(),
            vm_chains: chains
                .into_iter()
                .filter(|c| !BASE_CHAINS.contains(c))
                .map(str::to_owned)
                .collect(),
        }
    }

    /// How many of its per-VM objects (elements and chains) no VM in `live` (keys) owns.
    pub fn stale(&self, live: &HashSet<&str>) -> usize {
        self.element_keys
            .iter()
            .chain(&self.vm_chains)
            .filter(|k| !live.contains(k.as_str()))
            .count()
    }
}

/// The chain a `forwards` element jumps to, if it is a jump or goto.
pub fn target_of(e: &SetElement) -> Option<&str> {
    match e.data() {
        Some(SetElementData::Verdict(Verdict::GotoTo(c) | Verdict::JumpTo(c))) => Some(c.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(id: &str, forward: Option<(u16, u16)>) -> VmNft {
        VmNft {
            key: format!("fvabcd{:0>8}", id.len()),
            vm_id: id.into(),
            guest_ip: Ipv4Addr::new(10, 200, 0, 2),
            forwards: forward
                .map(|(host_port, guest_port)| Forward {
                    host_port,
                    guest_port,
                    protocol: fuse_types::Protocol::Tcp,
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn comments_name_the_vm_and_keep_the_key() {
        let v = vm("fuse-a", None);
        assert_eq!(v.comment(), "fvabcd00000006 fuse-a");
        assert_eq!(key_of(&v.comment()), v.key);
        // A 128-character id (the longest allowed) still fits, key first.
        let long = vm(&"x".repeat(128), None);
        assert_eq!(long.comment().len(), COMMENT_MAX);
        assert_eq!(key_of(&long.comment()), long.key);
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(table_name("beef"), "fuse_beef");
    }

    #[test]
    fn elements_carry_comment_key_and_verdict() {
        let v = vm("fuse-a", Some((20000, 8000)));
        let e = SetElement::port(20000)
            .verdict(Verdict::GotoTo(ChainName::new(v.key.clone()).unwrap()))
            .with_comment(v.comment());
        assert_eq!(e.key(), &20000u16.to_be_bytes());
        assert_eq!(target_of(&e), Some(v.key.as_str()));
        assert_eq!(SetElement::ipv4(v.guest_ip).key(), &[10, 200, 0, 2]);
        assert_eq!(target_of(&SetElement::ipv4(v.guest_ip)), None);
    }

    #[test]
    fn stale_counts_what_no_live_vm_owns() {
        let a = SetElement::ipv4(Ipv4Addr::new(10, 0, 0, 2)).with_comment("fva fuse-a");
        let b = SetElement::ipv4(Ipv4Addr::new(10, 0, 0, 6)).with_comment("fvb fuse-b");
        let bare = SetElement::ipv4(Ipv4Addr::new(10, 0, 0, 10));
        let d = Dump::new([&a, &b, &bare], ["prerouting", "fvb", "fvc", "postrouting"]);
        assert_eq!(d.vm_chains, ["fvb", "fvc"]);
        assert_eq!(
            d.stale(&["fva"].into_iter().collect()),
            4,
            "b, bare, fvb, fvc"
        );
        assert_eq!(d.stale(&["fva", "fvb", "fvc", ""].into_iter().collect()), 0);
        assert_eq!(Dump::default().stale(&HashSet::new()), 0);
    }
}
