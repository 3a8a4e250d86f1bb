//! A new identity for a guest that was not booted as itself: a VM restored from another
//! VM's memory (a template), a warm VM being claimed, or a paused VM resumed on another
//! host. What is applied, in order:
//!
//! 1. the link token (requests after this one must carry the new one);
//! 2. the hostname (`sethostname`);
//! 3. `eth0`: its MAC (a live change, which virtio-net allows), its one IPv4 address, the
//!    default route, and an emptied neighbour cache (`ip`, busybox or iproute2);
//! 4. the clock (`clock_settime(CLOCK_REALTIME)` from the host's time);
//! 5. the kernel's random pool: the host's fresh bytes added with `RNDADDENTROPY`
//!    (credited), then `RNDRESEEDCRNG`, so the next `/dev/urandom` read and a
//!    `boot_id` not read yet differ between VMs restored from one snapshot.
//!
//! Invariant: nothing here (or anywhere in the helper) reads
//! `/proc/sys/kernel/random/boot_id`: it is generated on its first read, and a template
//! snapshot taken before that read leaves each restored VM to generate its own.
//! Under the `process` backend only the token is applied ([`Guest::owns_the_system`]).

use crate::proto::{Identity, IdentityNet, Response};
use crate::Guest;
use base64::Engine as _;
use std::process::Command;

/// Applies `id`; answers what was applied, or the first part that failed (the parts before
/// it stay applied: a retry applies everything again).
pub fn apply(g: &Guest, id: &Identity) -> Response {
    let mut applied = Vec::new();
    match apply_parts(g, id, &mut applied) {
        Ok(()) => Response {
            applied: Some(applied),
            ..Response::default()
        },
        Err(e) => Response {
            applied: Some(applied),
            ..Response::err(e)
        },
    }
}

fn apply_parts(g: &Guest, id: &Identity, applied: &mut Vec<String>) -> Result<(), String> {
    if let Some(t) = &id.new_token {
        if t.len() < 16 {
            return Err("identity: the token must be at least 16 characters".into());
        }
        *g.token.write().unwrap_or_else(|e| e.into_inner()) = t.clone();
        applied.push("token".into());
    }
    if !g.owns_the_system() {
        return Ok(());
    }
    if let Some(h) = &id.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("identity: sethostname {h:?}: {e}"))?;
        applied.push("hostname".into());
    }
    if let Some(n) = &id.net {
        net(n, applied)?;
    }
    if let Some(ms) = id.unix_ms {
        let ts = nix::sys::time::TimeSpec::from(std::time::Duration::from_millis(ms));
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(|e| format!("identity: setting the clock: {e}"))?;
        applied.push("clock".into());
    }
    if let Some(seed) = &id.seed_b64 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(seed)
            .map_err(|_| "identity: seed_b64 is not valid base64".to_owned())?;
        reseed(&bytes)?;
        applied.push("random".into());
    }
    Ok(())
}

/// Runs `ip ARGS`; its stderr is the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("identity: running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "identity: ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn net(n: &IdentityNet, applied: &mut Vec<String>) -> Result<(), String> {
    let dev = if n.dev.is_empty() { "eth0" } else { &n.dev };
    if let Some(mac) = &n.mac {
        ip(&["link", "set", "dev", dev, "address", mac])?;
        applied.push("mac".into());
    }
    let addr = format!("{}/{}", n.address, n.prefix);
    ip(&["addr", "flush", "dev", dev])?;
    ip(&["addr", "add", &addr, "dev", dev])?;
    ip(&["link", "set", "dev", dev, "up"])?;
    if let Some(gw) = &n.gateway {
        ip(&["route", "replace", "default", "via", gw, "dev", dev])?;
    }
    // The old neighbours (the previous host side's MAC) are wrong now.
    ip(&["neigh", "flush", "dev", dev])?;
    applied.push("address".into());
    Ok(())
}

/// The kernel's `struct rand_pool_info` with room for 64 bytes.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: nix::libc::c_int,
    buf_size: nix::libc::c_int,
    buf: [u8; 64],
}

// RNDADDENTROPY is _IOW('R', 0x03, int[2]); RNDRESEEDCRNG is _IO('R', 0x07).
nix::ioctl_write_ptr_bad!(
    /// `RNDADDENTROPY`: adds bytes to the input pool and credits their entropy.
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[nix::libc::c_int; 2]>()),
    RandPoolInfo
);
nix::ioctl_none!(
    /// `RNDRESEEDCRNG`: reseeds the kernel's generator from the input pool now.
    rnd_reseed_crng,
    b'R',
    0x07
);

/// Adds `seed` (at most 64 bytes used) to the input pool, credited in full, then reseeds
/// the kernel's generator from it.
#[allow(unsafe_code)]
fn reseed(seed: &[u8]) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    if seed.len() < 32 {
        return Err("identity: the seed must be at least 32 bytes".into());
    }
    let n = seed.len().min(64);
    let mut info = RandPoolInfo {
        entropy_count: (n * 8) as nix::libc::c_int,
        buf_size: n as nix::libc::c_int,
        buf: [0; 64],
    };
    info.buf[..n].copy_from_slice(&seed[..n]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("identity: opening /dev/urandom: {e}"))?;
    // SAFETY: `f` is an open descriptor of /dev/urandom and `info` is a valid
    // `rand_pool_info` whose `buf_size` bytes follow its header, as the ioctl reads them.
    unsafe { rnd_add_entropy(f.as_raw_fd(), &info) }
        .map_err(|e| format!("identity: RNDADDENTROPY: {e}"))?;
    // SAFETY: an argument-less ioctl on an open descriptor of /dev/urandom.
    unsafe { rnd_reseed_crng(f.as_raw_fd()) }
        .map_err(|e| format!("identity: RNDRESEEDCRNG: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_helper_takes_the_token_and_nothing_of_the_host() {
        let g = Guest::new(
            "t".repeat(32),
            std::env::temp_dir(),
            std::sync::Arc::default(),
        );
        let id = Identity {
            new_token: Some("n".repeat(32)),
            hostname: Some("must-not-be-set".into()),
            unix_ms: Some(0),
            ..Identity::default()
        };
        let r = apply(&g, &id);
        assert_eq!(r.error, None);
        assert_eq!(r.applied, Some(vec!["token".to_owned()]));
        assert!(g.token_matches(&"n".repeat(32)) && !g.token_matches(&"t".repeat(32)));
        // Idempotent.
        assert_eq!(apply(&g, &id).applied, Some(vec!["token".to_owned()]));
        let short = Identity {
            new_token: Some("short".into()),
            ..Identity::default()
        };
        assert!(apply(&g, &short).error.is_some());
        assert!(
            g.token_matches(&"n".repeat(32)),
            "a refused token changes nothing"
        );
    }

    #[test]
    fn identity_round_trips_as_an_op() {
        let op = crate::proto::Op::Identity(Identity {
            new_token: Some("x".repeat(16)),
            net: Some(IdentityNet {
                dev: String::new(),
                mac: Some("02:00:00:00:00:01".into()),
                address: "10.0.0.2".into(),
                prefix: 30,
                gateway: Some("10.0.0.1".into()),
            }),
            ..Identity::default()
        });
        // As a request line: the op's fields beside the request's own token.
        let req = crate::proto::Request {
            token: "t".repeat(16),
            op,
        };
        let s = serde_json::to_string(&req).unwrap();
        assert!(s.contains(r#""op":"identity""#), "{s}");
        let back: crate::proto::Request = serde_json::from_str(&s).unwrap();
        assert_eq!(back.token, "t".repeat(16));
        let s = serde_json::to_string(&back.op).unwrap();
        let back: crate::proto::Op = serde_json::from_str(&s).unwrap();
        assert!(
            matches!(back, crate::proto::Op::Identity(i) if i.net.as_ref().unwrap().prefix == 30)
        );
    }
}
