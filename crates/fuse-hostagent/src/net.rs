//! Per-VM networking, done in-process over netlink (`nlink`), with no command spawned: a
//! /30 from `FC_AGENT_SUBNET` per VM (host side .1, guest side .2), a persistent tap
//! (Firecracker, QEMU) or a veth pair into the VM's own network namespace (`process`
//! backend), NAT of its egress and host-port forwards (to its agent port, and to each
//! exposed guest port, TCP or UDP) in the agent's nftables table ([`nft`]).
//!
//! Invariants: every device and namespace is named `fv<agent tag><vm hash>`
//! ([`dev_name`]), and every nftables object of a VM names that device and the VM
//! ([`nft`]); so destroy removes exactly what a VM owns, and the start-up reclaim finds,
//! by dumping links, `/run/netns` and the table, whatever no live VM owns. A VM's NAT and
//! forward are added in one nftables transaction and removed in one.
//!
//! Egress ([`egress`]): the same transaction adds the VM's objects in the agent's egress
//! table (its rules, the default isolation); [`Net::egress_update`] replaces them live, and
//! the resolver ([`crate::dns`]) adds the addresses of allowed names through
//! [`Net::resolved_add`]. The rules of every VM are kept in memory by guest address, for the
//! resolver to judge each query by its source.

pub mod egress;
pub mod nft;
pub mod ns;
mod veth;

use nlink::netlink::devconf::AddrGenMode;
use nlink::netlink::{namespace, Connection, Nftables, Route};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// Prefix of every device and namespace this agent creates.
pub const PREFIX: &str = "fv";

/// How long a destroy waits for a VM's veth to vanish with its namespace before it
/// deletes the device itself.
const DEVICE_GONE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What one VM's network is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetInfo {
    /// Index of its /30 in the pool.
    pub index: u32,
    /// Host-side device (tap or veth).
    pub dev: String,
    /// The VM's network namespace (`process` backend).
    #[serde(default)]
    pub netns: Option<String>,
    /// That namespace's identity when it was made (a record: teardown does not kill by it,
    /// since a namespace that is gone leaves its inode number to the next one made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<ns::NsId>,
    /// Host side address.
    pub host_ip: Ipv4Addr,
    /// Guest address.
    pub guest_ip: Ipv4Addr,
    /// Host port forwarded to the agent port, if any.
    #[serde(default)]
    pub forward: Option<(u16, u16)>,
    /// Guest ports published on host ports (`expose`), besides the agent port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed: Vec<Exposed>,
    /// Its egress rules (absent: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<fuse_types::EgressRules>,
}

/// A guest port published on a host port.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exposed {
    /// Guest port.
    pub port: u16,
    /// Transport.
    pub protocol: fuse_types::Protocol,
    /// Host port forwarded to it.
    pub host_port: u16,
}

impl NetInfo {
    fn nft(&self, vm_id: &str) -> nft::VmNft {
        let agent = self.forward.map(|(host_port, guest_port)| nft::Forward {
            host_port,
            guest_port,
            protocol: fuse_types::Protocol::Tcp,
        });
        let exposed = self.exposed.iter().map(|e| nft::Forward {
            host_port: e.host_port,
            guest_port: e.port,
            protocol: e.protocol,
        });
        nft::VmNft {
            key: self.dev.clone(),
            vm_id: vm_id.to_owned(),
            guest_ip: self.guest_ip,
            forwards: agent.into_iter().chain(exposed).collect(),
        }
    }

    /// Its objects in the egress table (`None` when its device is not there).
    fn egress(&self, vm_id: &str) -> Option<egress::VmEgress> {
        Some(egress::VmEgress {
            key: self.dev.clone(),
            vm_id: vm_id.to_owned(),
            ifindex: ifindex(&self.dev)?,
            rules: self.egress.clone().unwrap_or_default(),
        })
    }

    /// Every host port it holds.
    pub fn host_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.forward
            .map(|f| f.0)
            .into_iter()
            .chain(self.exposed.iter().map(|e| e.host_port))
    }

    /// Bytes received plus sent on its host-side device (`None` when the device is not
    /// there).
    pub fn bytes(&self) -> Option<u64> {
        let stat = |what: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{what}", self.dev))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Some(stat("rx_bytes")?.saturating_add(stat("tx_bytes")?))
    }
}

/// Networking failures: each names the step and the VM or device, and carries its cause.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `FC_AGENT_SUBNET` is not a usable pool.
    #[error("FC_AGENT_SUBNET {subnet:?}: {reason}")]
    Subnet {
        /// The configured value.
        subnet: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A netlink socket could not be opened.
    #[error("opening a {protocol} netlink socket")]
    Socket {
        /// `route` or `nftables`.
        protocol: &'static str,
        /// The cause.
        #[source]
        source: nlink::Error,
    },
    /// Creating a VM's network namespace failed.
    #[error("creating network namespace {ns} for {vm}")]
    NamespaceCreate {
        /// VM id.
        vm: String,
        /// Namespace name.
        ns: String,
        /// The cause.
        #[source]
        source: nlink::Error,
    },
    /// Deleting a network namespace failed.
    #[error("deleting network namespace {ns}")]
    NamespaceDelete {
        /// Namespace name.
        ns: String,
        /// The cause.
        #[source]
        source: nlink::Error,
    },
    /// Creating a VM's tap failed.
    #[error("creating tap {dev} for {vm}")]
    Tap {
        /// VM id.
        vm: String,
        /// Device name.
        dev: String,
        /// The cause.
        #[source]
        source: nlink::tuntap::Error,
    },
    /// A link step (create, address, up, route, delete) failed.
    #[error("{step} ({dev}) for {vm}")]
    Link {
        /// What was being done.
        step: &'static str,
        /// VM id (empty in the reclaim).
        vm: String,
        /// Device name.
        dev: String,
        /// The cause.
        #[source]
        source: nlink::Error,
    },
    /// A VM's nftables transaction failed.
    #[error("nftables: {step} for {vm}")]
    Nft {
        /// `adding its NAT` or `removing its NAT`.
        step: &'static str,
        /// VM id.
        vm: String,
        /// The cause.
        #[source]
        source: nlink::Error,
    },
    /// Creating (or rebuilding) the agent's table failed.
    #[error("nftables: {step} table {table}")]
    Table {
        /// What was being done.
        step: &'static str,
        /// Table name.
        table: String,
        /// The cause.
        #[source]
        source: nlink::Error,
    },
    /// Listing links for the reclaim failed.
    #[error("listing links")]
    LinkList(#[source] nlink::Error),
    /// A blocking step's thread died.
    #[error("{step} for {vm}: the worker thread failed")]
    Worker {
        /// What was being done.
        step: &'static str,
        /// VM id.
        vm: String,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl NetError {
    /// The error and its causes on one line (`step: cause: cause`), for messages that
    /// cross the wire without the chain.
    pub fn report(&self) -> String {
        crate::error_chain(self)
    }

    /// A link step of `vm`'s network on `dev` that failed.
    fn link(step: &'static str, vm: &str, dev: &str) -> impl FnOnce(nlink::Error) -> NetError {
        let (vm, dev) = (vm.to_owned(), dev.to_owned());
        move |source| NetError::Link {
            step,
            vm,
            dev,
            source,
        }
    }
}

/// The pool of /30s.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    base: u32,
    slots: u32,
}

impl Pool {
    /// Parses `a.b.c.d/len` (len ≤ 30).
    pub fn parse(s: &str) -> Result<Pool, NetError> {
        let bad = |reason| NetError::Subnet {
            subnet: s.to_owned(),
            reason,
        };
        let (ip, len) = s.split_once('/').ok_or_else(|| bad("not a.b.c.d/len"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad("bad address"))?;
        let len: u32 = len.parse().map_err(|_| bad("bad length"))?;
        if !(8..=30).contains(&len) {
            return Err(bad("length must be 8-30"));
        }
        let mask = u32::MAX << (32 - len);
        Ok(Pool {
            base: u32::from(ip) & mask,
            slots: 1 << (30 - len),
        })
    }

    /// The addresses of slot `i`.
    pub fn addrs(&self, i: u32) -> (Ipv4Addr, Ipv4Addr) {
        let net = self.base + 4 * i;
        (Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2))
    }

    /// The lowest slot not in `used`.
    pub fn first_free(&self, used: &[u32]) -> Option<u32> {
        (0..self.slots).find(|i| !used.contains(i))
    }
}

/// A 4-hex tag of this agent (from its state directory): network namespace names are
/// global to the machine, so two agents on one machine (tests) never reclaim each other's.
pub fn agent_tag(dir: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(dir.display().to_string().as_bytes()))[..4].to_owned()
}

/// A short device and namespace name for a VM (Linux allows 15 characters).
pub fn dev_name(tag: &str, vm_id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(vm_id.as_bytes());
    format!("{PREFIX}{tag}{}", &hex::encode(h)[..8])
}

/// The index of device `dev` in the agent's namespace, `None` when there is none.
///
/// Through `SIOCGIFINDEX` rather than an `RTM_GETLINK`: the kernel answers a getlink by
/// first flushing the device's pending link-state events under the RTNL lock, and for a
/// device that is up without carrier (a veth whose peer is not up yet, or is going away
/// with its namespace) that flush is a `synchronize_net()`, which every other VM's
/// netlink work then waits behind.
fn ifindex(dev: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(dev).ok()
}

/// The guest side of a VM's veth pair (inside its namespace).
fn peer_name(dev: &str) -> String {
    format!("{dev}g")
}

/// Whether this host can do networking: root, and a netlink socket opens. Spawns nothing.
pub fn available() -> bool {
    nix::unistd::geteuid().is_root() && Connection::<Route>::new().is_ok()
}

/// What the start-up reclaim removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// nftables elements and chains of VMs no live VM owns.
    pub nft: usize,
    /// Devices (taps, veths).
    pub devices: usize,
    /// Network namespaces.
    pub netns: usize,
}

/// The agent's networking: one rtnetlink and one nftables socket, shared by every VM's
/// setup and teardown (nlink serializes requests on each).
pub struct Net {
    route: Connection<Route>,
    nft: Connection<Nftables>,
    tag: String,
    table: String,
    egress_table: String,
    dns_port: Option<u16>,
    guests: parking_lot::RwLock<HashMap<Ipv4Addr, Guest>>,
}

/// What the resolver knows of one VM: its rules, and the addresses it answered for it
/// (with when they expire), so a rule change keeps those of names still allowed.
#[derive(Debug, Clone)]
pub struct Guest {
    /// VM id.
    pub vm_id: String,
    /// Its key (device name).
    pub key: String,
    /// Its rules.
    pub rules: fuse_types::EgressRules,
    /// Resolved addresses: the name they were answered for, and their expiry.
    pub resolved: HashMap<std::net::IpAddr, (String, std::time::Instant)>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("table", &self.table).finish()
    }
}

/// Runs blocking work (mounts, `/dev/net/tun`, `/proc` scans) off the async workers.
async fn blocking<T: Send + 'static>(
    step: &'static str,
    vm: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| NetError::Worker {
            step,
            vm: vm.to_owned(),
            source,
        })
}

impl Net {
    /// Opens the sockets of the agent with this tag (its table is `fuse_<tag>`). Call
    /// [`Net::reclaim`] before the first VM: it creates the table.
    pub fn new(tag: &str) -> Result<Net, NetError> {
        Self::with_dns(tag, None)
    }

    /// [`Net::new`], with the port of the agent's resolver: the guests' DNS is redirected
    /// to it, and it is the one port of the host they reach.
    pub fn with_dns(tag: &str, dns_port: Option<u16>) -> Result<Net, NetError> {
        Ok(Net {
            route: Connection::<Route>::new().map_err(|source| NetError::Socket {
                protocol: "route",
                source,
            })?,
            nft: Connection::<Nftables>::new().map_err(|source| NetError::Socket {
                protocol: "nftables",
                source,
            })?,
            tag: tag.to_owned(),
            table: nft::table_name(tag),
            egress_table: egress::table_name(tag),
            dns_port,
            guests: parking_lot::RwLock::new(HashMap::new()),
        })
    }

    /// Sets up a VM's network. `with_netns` puts the guest side in its own namespace
    /// (veth); otherwise a persistent tap is created for the VMM to open by name. The
    /// agent port's `forward` and the `exposed` ports are installed in the same nftables
    /// transaction as its NAT, with its egress rules ([`egress`]; `None`: the defaults).
    /// On failure whatever was made is removed again.
    // Each argument is one independent part of the VM's network (its slot, its device kind,
    // its forwards, its egress rules); a struct of them would only be built to be unpacked.
    #[allow(clippy::too_many_arguments)]
    pub async fn setup(
        &self,
        vm_id: &str,
        index: u32,
        pool: &Pool,
        with_netns: bool,
        forward: Option<(u16, u16)>,
        exposed: Vec<Exposed>,
        egress_rules: Option<fuse_types::EgressRules>,
    ) -> Result<NetInfo, NetError> {
        let (host_ip, guest_ip) = pool.addrs(index);
        let dev = dev_name(&self.tag, vm_id);
        let mut info = NetInfo {
            index,
            dev: dev.clone(),
            netns: with_netns.then(|| dev.clone()),
            netns_id: None,
            host_ip,
            guest_ip,
            forward,
            exposed,
            egress: egress_rules.filter(|r| !r.is_default()),
        };
        if let Err(e) = self.setup_steps(vm_id, &mut info).await {
            if let Err(undo) = self.teardown(vm_id, &info, None).await {
                tracing::warn!(vm_id, error = %undo.report(), "undoing a failed network setup");
            }
            return Err(e);
        }
        Ok(info)
    }

    async fn setup_steps(&self, vm: &str, info: &mut NetInfo) -> Result<(), NetError> {
        let dev = info.dev.clone();
        let link = |step: &'static str, dev: &str| NetError::link(step, vm, dev);
        if let Some(name) = info.netns.clone() {
            let made = ns::create(&name)
                .await
                .map_err(|source| NetError::NamespaceCreate {
                    vm: vm.to_owned(),
                    ns: name.clone(),
                    source,
                })?;
            info.netns = Some(made.name.clone());
            let (id, inside, peer_ns) = (made.id, made.inside, made.fd);
            info.netns_id = id;
            let peer = peer_name(&dev);
            self.route
                .add_link(veth::Veth {
                    name: dev.clone(),
                    peer: peer.clone(),
                    peer_ns,
                })
                .await
                .map_err(link("creating the veth pair", &dev))?;
            self.host_side(vm, info).await?;
            let peer_index = inside
                .get_link_by_name(peer.as_str())
                .await
                .and_then(|l| l.ok_or_else(|| nlink::Error::interface_not_found(&peer)))
                .map_err(link("finding the guest side", &peer))?
                .ifindex();
            inside
                .set_addr_gen_mode_by_index(peer_index, AddrGenMode::None)
                .await
                .map_err(link("turning IPv6 address generation off", &peer))?;
            inside
                .add_address_by_index(peer_index, info.guest_ip.into(), 30)
                .await
                .map_err(link("adding the guest address", &peer))?;
            inside
                .set_link_up_by_index(peer_index)
                .await
                .map_err(link("bringing the guest side up", &peer))?;
            inside
                .add_route(nlink::Ipv4Route::default_route().gateway(info.host_ip))
                .await
                .map_err(link("adding the default route", &peer))?;
        } else {
            let d = dev.clone();
            blocking("creating the tap", vm, move || {
                nlink::tuntap::TunTapBuilder::new()
                    .name(d)
                    .mode(nlink::tuntap::Mode::Tap)
                    .create_persistent()
            })
            .await?
            .map_err(|source| NetError::Tap {
                vm: vm.to_owned(),
                dev: dev.clone(),
                source,
            })?;
            self.host_side(vm, info).await?;
        }
        // Forwarding is what makes the NAT route anything; one write, no command.
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
            tracing::warn!(error = %e, "enabling ip_forward");
        }
        let nft_err = |source| NetError::Nft {
            step: "adding its NAT and egress rules",
            vm: vm.to_owned(),
            source,
        };
        let mut tx = info
            .nft(vm)
            .add(&self.table, self.nft.transaction())
            .map_err(nft_err)?;
        let eg = info
            .egress(vm)
            .ok_or_else(|| nlink::Error::interface_not_found(&info.dev))
            .map_err(nft_err)?;
        tx = eg.add(&self.egress_table, tx).map_err(nft_err)?;
        tx.commit(&self.nft).await.map_err(nft_err)?;
        self.guest_register(vm, info);
        Ok(())
    }

    fn guest_register(&self, vm_id: &str, info: &NetInfo) {
        self.guests.write().insert(
            info.guest_ip,
            Guest {
                vm_id: vm_id.to_owned(),
                key: info.dev.clone(),
                rules: info.egress.clone().unwrap_or_default(),
                resolved: HashMap::new(),
            },
        );
    }

    /// The rules of the VM at guest address `ip`, for the resolver.
    pub fn guest(&self, ip: Ipv4Addr) -> Option<(String, fuse_types::EgressRules)> {
        self.guests
            .read()
            .get(&ip)
            .map(|g| (g.vm_id.clone(), g.rules.clone()))
    }

    /// Replaces a VM's egress rules, live, in one transaction: its chain and sets are made
    /// anew, with the addresses already resolved for names the new rules still allow.
    /// Returns the new network state (for the caller to persist).
    pub async fn egress_update(
        &self,
        vm_id: &str,
        info: &NetInfo,
        rules: fuse_types::EgressRules,
    ) -> Result<NetInfo, NetError> {
        let err = |source| NetError::Nft {
            step: "replacing its egress rules",
            vm: vm_id.to_owned(),
            source,
        };
        let mut next = info.clone();
        next.egress = (!rules.is_default()).then(|| rules.clone());
        let old = info
            .egress(vm_id)
            .ok_or_else(|| nlink::Error::interface_not_found(&info.dev))
            .map_err(err)?;
        let new = next
            .egress(vm_id)
            .ok_or_else(|| nlink::Error::interface_not_found(&info.dev))
            .map_err(err)?;
        let now = std::time::Instant::now();
        let keep: Vec<(std::net::IpAddr, String, std::time::Duration)> = self
            .guests
            .read()
            .get(&info.guest_ip)
            .map(|g| {
                g.resolved
                    .iter()
                    .filter(|(_, (name, until))| *until > now && rules.name_allowed(name))
                    .map(|(a, (name, until))| (*a, name.clone(), *until - now))
                    .collect()
            })
            .unwrap_or_default();
        let mut tx = old.remove(&self.egress_table, self.nft.transaction());
        tx = new.add(&self.egress_table, tx).map_err(err)?;
        for (addr, _, left) in &keep {
            tx = tx.add_set_elements(
                &egress::vm_set(
                    &self.egress_table,
                    &info.dev,
                    egress::SetKind::Resolved,
                    addr.is_ipv6(),
                ),
                &[egress::resolved_element(*addr, *left)],
            );
        }
        tx.commit(&self.nft).await.map_err(err)?;
        let mut guests = self.guests.write();
        let g = guests.entry(info.guest_ip).or_insert_with(|| Guest {
            vm_id: vm_id.to_owned(),
            key: info.dev.clone(),
            rules: rules.clone(),
            resolved: HashMap::new(),
        });
        g.rules = rules;
        g.resolved = keep
            .into_iter()
            .map(|(a, name, left)| (a, (name, now + left.max(egress::MIN_TTL))))
            .collect();
        Ok(next)
    }

    /// Lets the VM at `guest` reach `addrs` (each for its TTL), answered for the allowed
    /// `name`: added to its resolved sets before the resolver answers the guest. An address
    /// already there gets the longer of its two expiries.
    pub async fn resolved_add(
        &self,
        guest: Ipv4Addr,
        name: &str,
        addrs: &[(std::net::IpAddr, std::time::Duration)],
    ) -> Result<(), NetError> {
        let Some((vm_id, key)) = self
            .guests
            .read()
            .get(&guest)
            .map(|g| (g.vm_id.clone(), g.key.clone()))
        else {
            return Ok(());
        };
        let err = |source| NetError::Nft {
            step: "adding resolved addresses",
            vm: vm_id.clone(),
            source,
        };
        let now = std::time::Instant::now();
        // What to add, and whether each is there already (then it is replaced, so its
        // timeout is the new one).
        let mut todo = Vec::new();
        {
            let guests = self.guests.read();
            let known = guests.get(&guest).map(|g| &g.resolved);
            for (addr, ttl) in addrs {
                let ttl = (*ttl).clamp(egress::MIN_TTL, egress::MAX_TTL);
                let have = known.and_then(|k| k.get(addr)).map(|(_, u)| *u);
                if have.is_some_and(|u| u >= now + ttl) {
                    continue;
                }
                todo.push((*addr, ttl, have.is_some_and(|u| u > now)));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let build = |replace: bool| {
            let mut tx = self.nft.transaction();
            for (addr, ttl, there) in &todo {
                let set = egress::vm_set(
                    &self.egress_table,
                    &key,
                    egress::SetKind::Resolved,
                    addr.is_ipv6(),
                );
                let el = egress::resolved_element(*addr, *ttl);
                if replace && *there {
                    tx = tx.del_set_elements(&set, std::slice::from_ref(&el));
                }
                tx = tx.add_set_elements(&set, &[el]);
            }
            tx
        };
        match build(true).commit(&self.nft).await {
            // One expired in the kernel meanwhile: add them all afresh.
            Err(e) if e.is_not_found() => build(false).commit(&self.nft).await.map_err(err)?,
            r => r.map_err(err)?,
        }
        let fresh: Vec<(std::net::IpAddr, std::time::Instant)> =
            todo.iter().map(|(a, t, _)| (*a, now + *t)).collect();
        if let Some(g) = self.guests.write().get_mut(&guest) {
            g.resolved.retain(|_, (_, u)| *u > now);
            for (a, u) in fresh {
                g.resolved.insert(a, (name.to_owned(), u));
            }
        }
        Ok(())
    }

    /// Publishes one more guest port of a VM whose network is set up (`info` as it is
    /// now, before `e` is added to it): one nftables transaction.
    pub async fn expose_add(
        &self,
        vm_id: &str,
        info: &NetInfo,
        e: Exposed,
    ) -> Result<(), NetError> {
        let err = |source| NetError::Nft {
            step: "adding a published port",
            vm: vm_id.to_owned(),
            source,
        };
        let f = nft::Forward {
            host_port: e.host_port,
            guest_port: e.port,
            protocol: e.protocol,
        };
        let tx = info
            .nft(vm_id)
            .add_forward(&self.table, self.nft.transaction(), &f)
            .map_err(err)?;
        tx.commit(&self.nft).await.map_err(err)
    }

    /// The host side of a VM's link: its address, then up.
    async fn host_side(&self, vm: &str, info: &NetInfo) -> Result<(), NetError> {
        let err = |step| NetError::link(step, vm, &info.dev);
        let index = ifindex(&info.dev)
            .ok_or_else(|| nlink::Error::interface_not_found(&info.dev))
            .map_err(err("finding the host side"))?;
        // A VM's network is IPv4 only. Without a link-local address, bringing the link up
        // adds no IPv6 route: every VM's would go into one list of the host's IPv6 routing
        // table (fe80::/64), making each link-up slower than the last.
        self.route
            .set_addr_gen_mode_by_index(index, AddrGenMode::None)
            .await
            .map_err(err("turning IPv6 address generation off"))?;
        self.route
            .add_address_by_index(index, info.host_ip.into(), 30)
            .await
            .map_err(err("adding the host address"))?;
        self.route
            .set_link_up_by_index(index)
            .await
            .map_err(err("bringing the host side up"))
    }

    /// Removes everything a VM's network owns: its nftables objects (one transaction),
    /// the processes left in its namespace, its device, its namespace. Idempotent: what is
    /// already gone is skipped. Every step is tried; the first failure is returned.
    ///
    /// The processes are found by the namespace its name leads to, else by `pin` (the
    /// namespace held open from the VM's live process before it was stopped: an agent
    /// restarted in another mount namespace sees only the name's marker file). Never by the
    /// identity recorded at setup alone: once that namespace is gone its inode number is
    /// reused by the next namespace made on the machine, whose processes are not ours.
    pub async fn teardown(
        &self,
        vm_id: &str,
        info: &NetInfo,
        pin: Option<ns::Pin>,
    ) -> Result<(), NetError> {
        let mut first = None;
        if let Some(eg) = info.egress(vm_id) {
            if let Err(e) = eg
                .remove(&self.egress_table, self.nft.transaction())
                .commit(&self.nft)
                .await
            {
                for piece in eg.remove_each(&self.egress_table, || self.nft.transaction()) {
                    if let Err(e2) = piece.commit(&self.nft).await {
                        if !e2.is_not_found() && first.is_none() {
                            first = Some(NetError::Nft {
                                step: "removing its egress rules",
                                vm: vm_id.to_owned(),
                                source: e2,
                            });
                        }
                    }
                }
                tracing::debug!(vm_id, error = %e, "egress objects removed piece by piece");
            }
        }
        self.guests.write().remove(&info.guest_ip);
        let vm = info.nft(vm_id);
        let all = vm.remove(&self.table, self.nft.transaction());
        if let Err(e) = all.commit(&self.nft).await {
            // Some of it is gone (a setup that failed half-way, a table rebuilt since):
            // remove what is left piece by piece, each gone piece being no error.
            if !e.is_not_found() {
                first = Some(NetError::Nft {
                    step: "removing its NAT",
                    vm: vm_id.to_owned(),
                    source: e,
                });
            } else {
                for piece in vm.remove_each(&self.table, || self.nft.transaction()) {
                    if let Err(e) = piece.commit(&self.nft).await {
                        if !e.is_not_found() && first.is_none() {
                            first = Some(NetError::Nft {
                                step: "removing its NAT",
                                vm: vm_id.to_owned(),
                                source: e,
                            });
                        }
                    }
                }
            }
        }
        match &info.netns {
            Some(name) => {
                // Whatever still runs in the VM's namespace (an agent, commands) goes with it.
                let path = ns::path(name);
                let killed = blocking("killing the namespace's processes", vm_id, move || {
                    let id = ns::id_of(&path).or_else(|| pin.as_ref().and_then(ns::Pin::id));
                    let n = id.map(ns::kill_all_in);
                    // Released before the namespace is deleted: it must be able to go.
                    drop(pin);
                    n
                })
                .await;
                match killed {
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                    Ok(None) => {
                        tracing::debug!(
                            vm_id,
                            "no handle on the VM's namespace: nothing in it was killed"
                        );
                    }
                    Ok(Some(_)) => {}
                }
                // The namespace goes once its processes have, and takes the veth pair
                // with it: the kernel unregisters the devices of dying namespaces in
                // batches, where deleting each pair here costs an RCU grace period under
                // the RTNL lock. Destroy still returns only once the device is gone.
                if let Err(e) = self.namespace_delete(vm_id, name.clone()).await {
                    first.get_or_insert(e);
                }
                if let Err(e) = self.device_gone(vm_id, &info.dev).await {
                    first.get_or_insert(e);
                }
            }
            None => {
                // By index (see `ifindex`): a tap no VMM holds any more has no carrier.
                let gone = match ifindex(&info.dev) {
                    Some(i) => match self.route.del_link_by_index(i).await {
                        Err(e) if e.is_not_found() => Ok(()),
                        r => r,
                    },
                    None => Ok(()),
                };
                if let Err(source) = gone {
                    first.get_or_insert(NetError::link("deleting the device", vm_id, &info.dev)(
                        source,
                    ));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits (up to [`DEVICE_GONE_WAIT`]) for a VM's veth to go with its namespace, then
    /// deletes it if it is still there (something kept the namespace alive).
    async fn device_gone(&self, vm: &str, dev: &str) -> Result<(), NetError> {
        let err = |step| NetError::link(step, vm, dev);
        let deadline = tokio::time::Instant::now() + DEVICE_GONE_WAIT;
        let mut pause = std::time::Duration::from_millis(1);
        while tokio::time::Instant::now() < deadline {
            if ifindex(dev).is_none() {
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
        }
        match ifindex(dev) {
            Some(i) => match self.route.del_link_by_index(i).await {
                Err(e) if !e.is_not_found() => Err(err("deleting the device")(e)),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    async fn namespace_delete(&self, vm: &str, name: String) -> Result<(), NetError> {
        let n = name.clone();
        match blocking("deleting the network namespace", vm, move || {
            namespace::delete(&n)
        })
        .await?
        {
            Err(e) if !e.is_not_found() => Err(NetError::NamespaceDelete {
                ns: name,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// At start, with the VMs that were adopted (`live`: id and network): rebuilds the
    /// agent's table holding exactly their NAT and forwards (one transaction; what it held
    /// for any other VM is counted as reclaimed), then removes the devices and namespaces
    /// with this agent's prefix that no live VM owns, killing what runs in those namespaces.
    pub async fn reclaim(&self, live: &[(String, NetInfo)]) -> Result<Reclaimed, NetError> {
        let table_err = |step| {
            let table = self.table.clone();
            move |source| NetError::Table {
                step,
                table,
                source,
            }
        };
        let mut r = Reclaimed::default();
        let keys: HashSet<&str> = live.iter().map(|(_, n)| n.dev.as_str()).collect();
        let dump = self.dump().await.map_err(table_err("reading"))?;
        r.nft = dump.stale(&keys);
        let vms: Vec<nft::VmNft> = live.iter().map(|(id, n)| n.nft(id)).collect();
        nft::table_create(&self.tag, dump.exists, &vms, self.nft.transaction())
            .map_err(table_err("building"))?
            .commit(&self.nft)
            .await
            .map_err(table_err("creating"))?;
        // The egress table the same way: made anew with exactly the live VMs' rules.
        let egress_exists = self
            .nft
            .list_tables_in(egress::FAMILY)
            .await
            .map_err(table_err("reading"))?
            .iter()
            .any(|t| t.name == self.egress_table);
        let eg: Vec<egress::VmEgress> = live.iter().filter_map(|(id, n)| n.egress(id)).collect();
        egress::table_create(
            &self.tag,
            egress_exists,
            self.dns_port,
            &eg,
            self.nft.transaction(),
        )
        .map_err(table_err("building the egress"))?
        .commit(&self.nft)
        .await
        .map_err(table_err("creating the egress"))?;
        {
            let mut guests = self.guests.write();
            guests.clear();
        }
        for (id, n) in live {
            self.guest_register(id, n);
        }
        let ours = format!("{PREFIX}{}", self.tag);
        for l in self.route.get_links().await.map_err(NetError::LinkList)? {
            let Some(name) = l.name() else { continue };
            // A veth's peer (`…g`) lives in the VM's namespace; the host side carries the name.
            if name.starts_with(&ours) && !keys.contains(name) {
                // A leftover that cannot go is no reason not to start: the next start
                // tries again.
                match self.route.del_link_by_index(l.ifindex()).await {
                    Ok(()) => r.devices += 1,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!(dev = name, error = %e, "deleting a leftover device"),
                }
            }
        }
        let owned: HashSet<String> = live.iter().filter_map(|(_, n)| n.netns.clone()).collect();
        let p = ours.clone();
        let stray: Vec<String> = blocking("listing namespaces", "", move || ns::list(&p))
            .await?
            .into_iter()
            .filter(|n| !owned.contains(n))
            .collect();
        for name in stray {
            let path = ns::path(&name);
            blocking("killing a leftover namespace's processes", "", move || {
                ns::id_of(&path).map(ns::kill_all_in)
            })
            .await?;
            match self.namespace_delete("", name).await {
                Ok(()) => r.netns += 1,
                Err(e) => tracing::warn!(error = %e.report(), "deleting a leftover namespace"),
            }
        }
        Ok(r)
    }

    /// Deletes the agent's table, if it exists. The agent never does (its VMs' NAT must
    /// outlive it); this is for whoever is done with an agent for good, such as
    /// `fc-agent-bench` once its agents have stopped.
    pub async fn table_delete(&self) -> Result<(), NetError> {
        if let Err(e) = self
            .nft
            .del_table(self.egress_table.as_str(), egress::FAMILY)
            .await
        {
            if !e.is_not_found() {
                return Err(NetError::Table {
                    step: "deleting",
                    table: self.egress_table.clone(),
                    source: e,
                });
            }
        }
        match self.nft.del_table(self.table.as_str(), nft::FAMILY).await {
            Err(e) if !e.is_not_found() => Err(NetError::Table {
                step: "deleting",
                table: self.table.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// What the agent's table holds now (nothing when it does not exist).
    async fn dump(&self) -> Result<nft::Dump, nlink::Error> {
        let exists = self
            .nft
            .list_tables_in(nft::FAMILY)
            .await?
            .iter()
            .any(|t| t.name == self.table);
        if !exists {
            return Ok(nft::Dump::default());
        }
        let mut elements = Vec::new();
        for set in [nft::VMS_SET, nft::FORWARDS_MAP, nft::UDP_FORWARDS_MAP] {
            match self
                .nft
                .list_set_elements(&self.table, set, nft::FAMILY)
                .await
            {
                Ok(e) => elements.extend(e),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let chains = self
            .nft
            .list_chains_in(self.table.as_str(), nft::FAMILY)
            .await?;
        Ok(nft::Dump::new(
            &elements,
            chains.iter().map(|c| c.name.as_str()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_slots_and_addresses() {
        let p = Pool::parse("10.200.0.0/16").unwrap();
        assert_eq!(p.slots, 16384);
        assert_eq!(
            p.addrs(0),
            (Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2))
        );
        assert_eq!(
            p.addrs(1),
            (Ipv4Addr::new(10, 200, 0, 5), Ipv4Addr::new(10, 200, 0, 6))
        );
        assert_eq!(p.first_free(&[0, 1, 3]), Some(2));
        let tiny = Pool::parse("10.9.9.0/30").unwrap();
        assert_eq!(tiny.first_free(&[0]), None);
        assert!(Pool::parse("10.0.0.0/31").is_err());
        assert!(Pool::parse("nope").is_err());
        assert_eq!(
            Pool::parse("10.0.0.0/x").unwrap_err().to_string(),
            "FC_AGENT_SUBNET \"10.0.0.0/x\": bad length"
        );
        assert_eq!(dev_name("abcd", "fuse-a").len(), 14);
        assert_eq!(
            peer_name(&dev_name("abcd", "fuse-a")).len(),
            15,
            "fits IFNAMSIZ"
        );
        assert_ne!(dev_name("abcd", "fuse-a"), dev_name("abcd", "fuse-b"));
        assert_ne!(dev_name("abcd", "fuse-a"), dev_name("abce", "fuse-a"));
        assert_ne!(
            agent_tag(std::path::Path::new("/a")),
            agent_tag(std::path::Path::new("/b"))
        );
    }

    #[test]
    fn net_info_reads_state_written_before_the_namespace_id() {
        let old = r#"{"index":1,"dev":"fvabcd12345678","netns":"fvabcd12345678",
            "host_ip":"10.200.0.5","guest_ip":"10.200.0.6","forward":[20000,8000]}"#;
        let n: NetInfo = serde_json::from_str(old).unwrap();
        assert_eq!(n.netns_id, None);
        assert_eq!(
            n.nft("fuse-a").forwards,
            [nft::Forward {
                host_port: 20000,
                guest_port: 8000,
                protocol: fuse_types::Protocol::Tcp
            }]
        );
        assert!(n.exposed.is_empty());
        assert_eq!(n.nft("fuse-a").key, "fvabcd12345678");
    }

    #[test]
    fn report_carries_the_chain() {
        let e = NetError::Link {
            step: "adding the host address",
            vm: "fuse-a".into(),
            dev: "fvx".into(),
            source: nlink::Error::interface_not_found("fvx"),
        };
        let r = e.report();
        assert!(
            r.starts_with("adding the host address (fvx) for fuse-a: "),
            "{r}"
        );
        assert!(
            r.len() > "adding the host address (fvx) for fuse-a: ".len(),
            "{r}"
        );
    }
}
