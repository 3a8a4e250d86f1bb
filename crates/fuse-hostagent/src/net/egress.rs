//! The agent's egress table: what its VMs may reach, in nftables. Pure builders; the
//! socket they are committed through belongs to [`super::Net`].
//!
//! One table per agent, `inet fuse_<tag>_egress`, beside the NAT table of [`super::nft`]
//! (kept apart so the NAT table's layout and reclaim do not change, and `inet` so IPv6 is
//! filtered too):
//! - `forward` (filter, forward hook): `iif vmap @egress_vms` sends a packet from a VM's
//!   device (by interface index) to that VM's chain; nothing else is touched;
//! - one chain per VM, named by its key: replies (`ct state established,related`) accepted;
//!   then the default isolation — other guests (`oifname "fv*"`, every agent's devices),
//!   link-local and metadata addresses (`169.254.0.0/16`, `fe80::/10`) dropped; then its
//!   deny sets dropped; then the mode: `accept`, `drop`, or its allow sets and resolved
//!   sets accepted and the rest dropped;
//! - per VM six sets: `<key>_a4`/`_a6` (allowed CIDRs, interval), `<key>_d4`/`_d6` (denied
//!   CIDRs, interval), `<key>_r4`/`_r6` (addresses the resolver answered for allowed names,
//!   each element with its record's TTL as timeout);
//! - `input` (filter): from any of this agent's devices, replies accepted, the resolver's
//!   port accepted, everything else to the host dropped;
//! - `prerouting` (nat, before the NAT table's): DNS (UDP and TCP port 53, to any address)
//!   from this agent's devices redirected to the resolver's port, so a guest cannot bypass
//!   it whatever its `resolv.conf` says.
//!
//! A VM's objects carry its key in their names (and the vmap element's comment), so its
//! removal takes exactly them, and the start-up rebuild makes the table anew with the live
//! VMs' objects in one transaction, as the NAT table is.

use fuse_types::{EgressEntry, EgressMode, EgressRules};
use nlink::netlink::nftables::{
    BaseChain, Chain, ChainName, CtState, FilterHook, NatHook, PacketField, Policy, Priority, Rule,
    Set, SetElement, SetKeyType, Transaction, Verdict,
};
use std::net::IpAddr;
use std::time::Duration;

/// The family of the egress table.
pub const FAMILY: nlink::netlink::nftables::Family = nlink::netlink::nftables::Family::Inet;
/// The verdict map from a VM's device (interface index) to its chain.
pub const VMS_MAP: &str = "egress_vms";
/// The table's base and shared chains.
pub const BASE_CHAINS: [&str; 4] = ["forward", "input", "guest_in", "prerouting"];
/// The shortest timeout a resolved address gets (a TTL of 0 or 1 s would expire before the
/// guest connects).
pub const MIN_TTL: Duration = Duration::from_secs(30);
/// The longest.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// The egress table of the agent with this tag.
pub fn table_name(tag: &str) -> String {
    format!("fuse_{tag}_egress")
}

/// One VM's egress objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEgress {
    /// Its key (device name): its chain's name and its sets' prefix.
    pub key: String,
    /// The VM id (comments).
    pub vm_id: String,
    /// Its device's interface index.
    pub ifindex: u32,
    /// Its rules.
    pub rules: EgressRules,
}

/// Which of a VM's sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// Allowed CIDRs.
    Allow,
    /// Denied CIDRs.
    Deny,
    /// Resolved addresses of allowed names.
    Resolved,
}

impl SetKind {
    fn letter(self) -> &'static str {
        match self {
            SetKind::Allow => "a",
            SetKind::Deny => "d",
            SetKind::Resolved => "r",
        }
    }
}

/// The name of one of `key`'s sets, for IPv6 or IPv4.
pub fn set_name(key: &str, kind: SetKind, v6: bool) -> String {
    format!("{key}_{}{}", kind.letter(), if v6 { 6 } else { 4 })
}

/// One of `key`'s sets.
pub fn vm_set(table: &str, key: &str, kind: SetKind, v6: bool) -> Set {
    let s = Set::new(table, &set_name(key, kind, v6))
        .family(FAMILY)
        .key_type(if v6 {
            SetKeyType::Ipv6Addr
        } else {
            SetKeyType::Ipv4Addr
        });
    match kind {
        SetKind::Allow | SetKind::Deny => s.interval(),
        SetKind::Resolved => s.per_element_timeouts(),
    }
}

fn vms_map(table: &str) -> Set {
    Set::new(table, VMS_MAP)
        .family(FAMILY)
        .key_type(SetKeyType::IfIndex)
        .vmap()
}

fn prefix_element(addr: IpAddr, prefix: u8) -> Result<SetElement, nlink::Error> {
    match addr {
        IpAddr::V4(a) => SetElement::ipv4_prefix(a, prefix),
        IpAddr::V6(a) => SetElement::ipv6_prefix(a, prefix),
    }
}

/// An element of a resolved set: one address for `ttl` (clamped to
/// [`MIN_TTL`]..[`MAX_TTL`]).
pub fn resolved_element(addr: IpAddr, ttl: Duration) -> SetElement {
    let e = match addr {
        IpAddr::V4(a) => SetElement::ipv4(a),
        IpAddr::V6(a) => SetElement::ipv6(a),
    };
    e.with_timeout(ttl.clamp(MIN_TTL, MAX_TTL))
}

impl VmEgress {
    fn chain(&self) -> Result<ChainName, nlink::Error> {
        ChainName::new(self.key.clone())
    }

    fn comment(&self) -> String {
        super::nft::VmNft::comment_of(&self.key, &self.vm_id)
    }

    fn sets(&self, table: &str) -> Vec<(SetKind, bool, Set)> {
        let mut v = Vec::new();
        for kind in [SetKind::Allow, SetKind::Deny, SetKind::Resolved] {
            for v6 in [false, true] {
                v.push((kind, v6, vm_set(table, &self.key, kind, v6)));
            }
        }
        v
    }

    /// Queues the creation of its objects: sets (with the CIDRs of its rules), its chain
    /// and rules, then the vmap element that sends its device's packets there.
    pub fn add(&self, table: &str, mut tx: Transaction) -> Result<Transaction, nlink::Error> {
        for (_, _, s) in self.sets(table) {
            tx = tx.add_set(s);
        }
        for (kind, list) in [
            (SetKind::Allow, &self.rules.allow),
            (SetKind::Deny, &self.rules.deny),
        ] {
            let (mut v4, mut v6) = (Vec::new(), Vec::new());
            for (addr, prefix) in EgressRules::entries(list).filter_map(|e| e.net()) {
                let el = prefix_element(addr, prefix)?;
                if addr.is_ipv4() {
                    v4.push(el)
                } else {
                    v6.push(el)
                }
            }
            for (v6s, els) in [(false, v4), (true, v6)] {
                if !els.is_empty() {
                    tx = tx.add_set_elements(&vm_set(table, &self.key, kind, v6s), &els);
                }
            }
        }
        tx = tx.add_chain(
            Chain::new(table, self.chain()?)?
                .family(FAMILY)
                .comment(self.comment()),
        );
        for rule in self.rules(table) {
            tx = tx.add_rule(rule);
        }
        Ok(tx.add_set_elements(
            &vms_map(table),
            &[SetElement::ifindex(self.ifindex)
                .verdict(Verdict::GotoTo(self.chain()?))
                .with_comment(self.comment())],
        ))
    }

    /// Its chain's rules, in order.
    fn rules(&self, table: &str) -> Vec<Rule> {
        let r = || Rule::new(table, &self.key).family(FAMILY);
        let set = |kind, v6| set_name(&self.key, kind, v6);
        let mut v = vec![
            r().match_ct_state(CtState(CtState::ESTABLISHED.0 | CtState::RELATED.0))
                .accept(),
            // Other guests, of this agent or another on the machine.
            r().match_oif_prefix(super::PREFIX).drop(),
            r().match_daddr(IpAddr::V4([169, 254, 0, 0].into()), 16)
                .drop(),
            r().match_daddr(IpAddr::V6([0xfe80, 0, 0, 0, 0, 0, 0, 0].into()), 10)
                .drop(),
            r().match_in_interval_set(PacketField::Ip4Daddr, &set(SetKind::Deny, false))
                .drop(),
            r().match_in_interval_set(PacketField::Ip6Daddr, &set(SetKind::Deny, true))
                .drop(),
        ];
        match self.rules.mode {
            EgressMode::AllowAll => v.push(r().accept()),
            EgressMode::DenyAll => v.push(r().drop()),
            EgressMode::Allowlist => {
                v.push(
                    r().match_in_interval_set(PacketField::Ip4Daddr, &set(SetKind::Allow, false))
                        .accept(),
                );
                v.push(
                    r().match_in_interval_set(PacketField::Ip6Daddr, &set(SetKind::Allow, true))
                        .accept(),
                );
                v.push(
                    r().match_in_set(PacketField::Ip4Daddr, &set(SetKind::Resolved, false))
                        .accept(),
                );
                v.push(
                    r().match_in_set(PacketField::Ip6Daddr, &set(SetKind::Resolved, true))
                        .accept(),
                );
                v.push(r().drop());
            }
        }
        v
    }

    /// Queues the removal of its objects (the vmap element first, then the chain, then the
    /// sets its rules referred to).
    pub fn remove(&self, table: &str, mut tx: Transaction) -> Transaction {
        tx = tx
            .del_set_elements(&vms_map(table), &[SetElement::ifindex(self.ifindex)])
            .flush_chain(table, &self.key, FAMILY)
            .del_chain(table, &self.key, FAMILY);
        for (_, _, s) in self.sets(table) {
            tx = tx.del_set(table, &s_name(&s), FAMILY);
        }
        tx
    }

    /// Its objects' removals one transaction each, for when some are already gone.
    pub fn remove_each(&self, table: &str, new: impl Fn() -> Transaction) -> Vec<Transaction> {
        let mut v = vec![
            new().del_set_elements(&vms_map(table), &[SetElement::ifindex(self.ifindex)]),
            new()
                .flush_chain(table, &self.key, FAMILY)
                .del_chain(table, &self.key, FAMILY),
        ];
        for (_, _, s) in self.sets(table) {
            v.push(new().del_set(table, &s_name(&s), FAMILY));
        }
        v
    }
}

fn s_name(s: &Set) -> String {
    s.name().to_owned()
}

/// Queues the whole egress table: replaced (when `exists`) by the layout with exactly the
/// `live` VMs' objects, in one transaction. `dns_port` is the resolver's port (none: no DNS
/// redirect, and the guest reaches nothing on the host).
pub fn table_create(
    tag: &str,
    exists: bool,
    dns_port: Option<u16>,
    live: &[VmEgress],
    mut tx: Transaction,
) -> Result<Transaction, nlink::Error> {
    let table = table_name(tag);
    let t = table.as_str();
    let ours = format!("{}{tag}", super::PREFIX);
    if exists {
        tx = tx.del_table(t, FAMILY);
    }
    let filter = |name: &str, hook: FilterHook| -> Result<Chain, nlink::Error> {
        Ok(Chain::new(t, name)?
            .family(FAMILY)
            .base(BaseChain::filter(hook, Priority::Filter).policy(Policy::Accept)))
    };
    let r = |chain: &str| Rule::new(t, chain).family(FAMILY);
    tx = tx
        .add_table_with_comment(t, FAMILY, 0, Some(&format!("fc-agent {tag} egress")))
        .add_set(vms_map(t))
        .add_chain(filter("forward", FilterHook::Forward)?)
        .add_chain(filter("input", FilterHook::Input)?)
        .add_chain(Chain::new(t, "guest_in")?.family(FAMILY))
        .add_chain(
            Chain::new(t, "prerouting")?
                .family(FAMILY)
                .base(BaseChain::nat(NatHook::Prerouting, Priority::Custom(-110))),
        )
        .add_rule(r("forward").vmap(PacketField::Iif, VMS_MAP))
        .add_rule(r("input").match_iif_prefix(&ours).try_goto("guest_in")?)
        .add_rule(
            r("guest_in")
                .match_ct_state(CtState(CtState::ESTABLISHED.0 | CtState::RELATED.0))
                .accept(),
        );
    if let Some(p) = dns_port {
        tx = tx
            .add_rule(r("guest_in").match_udp_dport(p).accept())
            .add_rule(r("guest_in").match_tcp_dport(p).accept())
            .add_rule(
                r("prerouting")
                    .match_iif_prefix(&ours)
                    .match_udp_dport(53)
                    .redirect(Some(p)),
            )
            .add_rule(
                r("prerouting")
                    .match_iif_prefix(&ours)
                    .match_tcp_dport(53)
                    .redirect(Some(p)),
            );
    }
    tx = tx.add_rule(r("guest_in").drop());
    for vm in live {
        tx = vm.add(t, tx)?;
    }
    Ok(tx)
}

/// Whether a rule change needs the host to enforce anything beyond the defaults.
pub fn needs_feature(rules: &EgressRules) -> bool {
    !rules.is_default()
}

/// The CIDR entries of a list (for reports).
pub fn nets(list: &[String]) -> Vec<(IpAddr, u8)> {
    EgressRules::entries(list)
        .filter_map(|e| match e {
            EgressEntry::Net { addr, prefix } => Some((addr, prefix)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_short_and_per_vm() {
        assert_eq!(table_name("beef"), "fuse_beef_egress");
        assert_eq!(
            set_name("fvbeef12345678", SetKind::Resolved, true),
            "fvbeef12345678_r6"
        );
        assert_eq!(
            resolved_element(IpAddr::V4([1, 2, 3, 4].into()), Duration::from_secs(1)).key(),
            &[1, 2, 3, 4]
        );
        assert_eq!(
            nets(&["10.0.0.0/8".into(), "a.test".into()]),
            [(IpAddr::V4([10, 0, 0, 0].into()), 8)]
        );
    }
}
