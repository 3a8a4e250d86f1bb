//! Test hosts on one machine: a network namespace made by the test, linked to the root
//! namespace by a veth pair on a /30 (the root side `.1`, the namespace side `.2`), for a
//! host agent to run in and be reached over a link the test can cut. Everything in it goes
//! with it on drop.

use std::process::{Command, Stdio};

/// One namespace and its link.
#[derive(Debug)]
pub struct Lab {
    /// The namespace's name (`ip netns`).
    pub name: String,
    /// The root side of the link.
    pub veth: String,
    /// The /30's first three octets and a dot (`10.252.7.`).
    pub net: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Lab {
    /// Makes namespace `name` linked by `veth` (at most 14 characters: the peer adds `p`)
    /// on the /30 `net` + `0`. `None`, with the prerequisite reported (a failure under CI),
    /// when namespaces cannot be made here.
    pub fn create(name: &str, veth: &str, net: &str) -> Option<Lab> {
        let peer = format!("{veth}p");
        let lab = Lab {
            name: name.to_owned(),
            veth: veth.to_owned(),
            net: net.to_owned(),
        };
        let ok = ip(&["netns", "add", name])
            && ip(&["link", "add", veth, "type", "veth", "peer", "name", &peer])
            && ip(&["link", "set", &peer, "netns", name])
            && ip(&["addr", "add", &format!("{net}1/30"), "dev", veth])
            && ip(&["link", "set", veth, "up"])
            && ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{net}2/30"),
                "dev",
                &peer,
            ])
            && ip(&["-n", name, "link", "set", &peer, "up"])
            && ip(&["-n", name, "link", "set", "lo", "up"]);
        if ok {
            Some(lab)
        } else {
            crate::prereq::missing(
                "network namespaces",
                "the tests make them: run as root with iproute2",
            );
            None
        }
    }

    /// The namespace side's address.
    pub fn ip(&self) -> String {
        format!("{}2", self.net)
    }

    /// `program` to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `args` inside the namespace; its standard output.
    pub fn in_ns(&self, args: &[&str]) -> String {
        let out = self
            .command(args[0])
            .args(&args[1..])
            .output()
            .expect("running a command in a test namespace");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Lets this namespace and `other` reach each other through the host (a route each way
    /// and forwarding on the two host-side links only: nothing else on the machine is
    /// routed).
    pub fn route_to(&self, other: &Lab) -> bool {
        let fwd = |veth: &str| {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{veth}/forwarding"), b"1").is_ok()
        };
        fwd(&self.veth)
            && fwd(&other.veth)
            && ip(&[
                "-n",
                &self.name,
                "route",
                "replace",
                &format!("{}0/30", other.net),
                "via",
                &format!("{}1", self.net),
            ])
            && ip(&[
                "-n",
                &other.name,
                "route",
                "replace",
                &format!("{}0/30", self.net),
                "via",
                &format!("{}1", other.net),
            ])
    }

    /// Brings the link down (the namespace is cut off) or up.
    pub fn link(&self, up: bool) {
        assert!(ip(&[
            "link",
            "set",
            &self.veth,
            if up { "up" } else { "down" }
        ]));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever still runs in the namespace goes with it.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("ip netns pids {} | xargs -r kill -9", self.name))
            .status();
        ip(&["link", "del", &self.veth]);
        ip(&["netns", "del", &self.name]);
    }
}
