//! Per-VM networking: a /30 from `FC_AGENT_SUBNET` per VM (host side .1, guest side .2), a
//! tap device (Firecracker) or a veth pair into the VM's own network namespace (`process`
//! backend), NAT for egress, and an optional host-port forward to the agent's port. Every
//! rule carries a `fuse:<vm>` comment and every device a `fv` prefix, so destroy removes
//! exactly what a VM owns and the start-up reclaim finds what no VM owns.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::process::Command;

/// Prefix of every device and namespace this agent creates.
pub const PREFIX: &str = "fv";

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
    /// Host side address.
    pub host_ip: Ipv4Addr,
    /// Guest address.
    pub guest_ip: Ipv4Addr,
    /// Host port forwarded to the agent port, if any.
    #[serde(default)]
    pub forward: Option<(u16, u16)>,
}

/// The pool of /30s.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    base: u32,
    slots: u32,
}

impl Pool {
    /// Parses `a.b.c.d/len` (len ≤ 30).
    pub fn parse(s: &str) -> Result<Pool, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("FC_AGENT_SUBNET {s:?} is not a.b.c.d/len"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("FC_AGENT_SUBNET {s:?}: bad address"))?;
        let len: u32 = len
            .parse()
            .map_err(|_| format!("FC_AGENT_SUBNET {s:?}: bad length"))?;
        if !(8..=30).contains(&len) {
            return Err(format!("FC_AGENT_SUBNET {s:?}: length must be 8-30"));
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

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command with `input` on its standard input (batches: `ip -batch -`,
/// `iptables-restore`), so one process does what would take many.
fn run_stdin(args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(input.as_bytes())
            .map_err(|e| format!("{}: {e}", args[0]))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The comment on a VM's NAT rules: `fuse:<agent tag>:<vm id>`.
fn comment(tag: &str, vm_id: &str) -> String {
    format!("fuse:{tag}:{vm_id}")
}

/// The agent tag inside a device name (`fv` + tag + hash).
fn tag_of(dev: &str) -> &str {
    dev.get(PREFIX.len()..PREFIX.len() + 4).unwrap_or("")
}

/// Whether this host can do networking (root and `ip` present).
pub fn available() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// Sets up a VM's network. `with_netns` puts the guest side in its own namespace (veth);
/// otherwise a tap is created for the VMM.
pub fn setup(
    tag: &str,
    vm_id: &str,
    index: u32,
    pool: &Pool,
    with_netns: bool,
    forward: Option<(u16, u16)>,
) -> Result<NetInfo, String> {
    let (host_ip, guest_ip) = pool.addrs(index);
    let dev = dev_name(tag, vm_id);
    let info = NetInfo {
        index,
        dev: dev.clone(),
        netns: with_netns.then(|| dev.clone()),
        host_ip,
        guest_ip,
        forward,
    };
    let r = (|| -> Result<(), String> {
        let host_cidr = format!("{host_ip}/30");
        let mut host_side = String::new();
        if let Some(ns) = &info.netns {
            let peer = format!("{dev}g");
            run(&["ip", "netns", "add", ns])?;
            host_side.push_str(&format!(
                "link add {dev} type veth peer name {peer}\nlink set {peer} netns {ns}\n"
            ));
            host_side.push_str(&format!(
                "addr add {host_cidr} dev {dev}\nlink set {dev} up\n"
            ));
            run_stdin(&["ip", "-batch", "-"], &host_side)?;
            let guest_side = format!(
                "addr add {guest_ip}/30 dev {peer}\nlink set {peer} up\nlink set lo up\n\
                 route add default via {host_ip}\n"
            );
            run_stdin(&["ip", "-n", ns, "-batch", "-"], &guest_side)?;
        } else {
            host_side.push_str(&format!(
                "tuntap add {dev} mode tap\naddr add {host_cidr} dev {dev}\nlink set {dev} up\n"
            ));
            run_stdin(&["ip", "-batch", "-"], &host_side)?;
        }
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        // Every NAT rule of the VM in one iptables-restore transaction.
        let c = comment(tag, vm_id);
        let mut rules = format!(
            "*nat\n-A POSTROUTING -s {guest_ip}/32 ! -o {dev} -m comment --comment {c} -j MASQUERADE\n"
        );
        if let Some((hp, gp)) = forward {
            for chain in ["PREROUTING", "OUTPUT"] {
                rules.push_str(&format!(
                    "-A {chain} -p tcp -m tcp --dport {hp} -m addrtype --dst-type LOCAL \
                     -m comment --comment {c} -j DNAT --to-destination {guest_ip}:{gp}\n"
                ));
            }
        }
        rules.push_str("COMMIT\n");
        run_stdin(&["iptables-restore", "-w", "--noflush"], &rules)?;
        Ok(())
    })();
    if let Err(e) = r {
        teardown(vm_id, &info);
        return Err(format!("network setup for {vm_id}: {e}"));
    }
    Ok(info)
}

/// Kills every process in a network namespace.
fn kill_namespace_processes(ns: &str) {
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes everything a VM's network owns (idempotent).
pub fn teardown(vm_id: &str, info: &NetInfo) {
    remove_rules(&comment(tag_of(&info.dev), vm_id));
    // Whatever still runs in the VM's namespace (an agent, commands) goes with it.
    if let Some(ns) = &info.netns {
        kill_namespace_processes(ns);
    }
    let _ = run(&["ip", "link", "del", &info.dev]);
    if let Some(ns) = &info.netns {
        let _ = run(&["ip", "netns", "del", ns]);
    }
}

fn nat_rules() -> Vec<String> {
    Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes every NAT rule whose comment matches `pred`, in one iptables-restore
/// transaction; returns how many.
fn remove_rules_where(pred: impl Fn(&str) -> bool) -> usize {
    let mut batch = String::from("*nat\n");
    let mut n = 0;
    for rule in nat_rules() {
        if !rule.starts_with("-A ") {
            continue;
        }
        let Some(c) = rule
            .split("--comment ")
            .nth(1)
            .and_then(|c| c.split_whitespace().next())
            .map(|c| c.trim_matches('"').to_owned())
        else {
            continue;
        };
        if !c.starts_with("fuse:") || !pred(&c) {
            continue;
        }
        batch.push_str(&format!("-D {}\n", &rule[3..]));
        n += 1;
    }
    if n == 0 {
        return 0;
    }
    batch.push_str("COMMIT\n");
    match run_stdin(&["iptables-restore", "-w", "--noflush"], &batch) {
        Ok(()) => n,
        Err(e) => {
            tracing::warn!(error = %e, "removing NAT rules");
            0
        }
    }
}

fn remove_rules(c: &str) {
    remove_rules_where(|x| x == c);
}

/// What the start-up reclaim removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// NAT rules.
    pub rules: usize,
    /// Devices (taps, veths).
    pub devices: usize,
    /// Network namespaces.
    pub netns: usize,
}

/// Removes rules, devices and namespaces that no live VM owns, in that order.
pub fn reclaim(tag: &str, live_vms: &[String], live_devs: &[String]) -> Reclaimed {
    let ours = format!("{PREFIX}{tag}");
    let mut r = Reclaimed::default();
    if !available() {
        return r;
    }
    let mine = format!("fuse:{tag}:");
    r.rules = remove_rules_where(|c| {
        c.starts_with(&mine) && !live_vms.iter().any(|v| c == format!("{mine}{v}"))
    });
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in links.lines() {
        let name = line
            .split(':')
            .nth(1)
            .unwrap_or("")
            .trim()
            .split('@')
            .next()
            .unwrap_or("")
            .to_owned();
        // A veth's peer (`…g`) lives in the VM's namespace; the host side carries the name.
        if name.starts_with(&ours)
            && !live_devs.contains(&name)
            && run(&["ip", "link", "del", &name]).is_ok()
        {
            r.devices += 1;
        }
    }
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in ns.lines() {
        let name = line.split_whitespace().next().unwrap_or("").to_owned();
        if name.starts_with(&ours) && !live_devs.contains(&name) && {
            kill_namespace_processes(&name);
            run(&["ip", "netns", "del", &name]).is_ok()
        } {
            r.netns += 1;
        }
    }
    r
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
        assert_eq!(dev_name("abcd", "fuse-a").len(), 14);
        assert_ne!(dev_name("abcd", "fuse-a"), dev_name("abcd", "fuse-b"));
        assert_ne!(dev_name("abcd", "fuse-a"), dev_name("abce", "fuse-a"));
        assert_ne!(
            agent_tag(std::path::Path::new("/a")),
            agent_tag(std::path::Path::new("/b"))
        );
    }
}
