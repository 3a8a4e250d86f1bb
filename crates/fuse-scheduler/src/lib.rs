//! Placement (DESIGN §4) as a pure function over a snapshot of hosts.
//!
//! Invariants: only `active` hosts are candidates; a requested region must match exactly;
//! every dimension of the free capacity (cpus, RAM, storage, VM slots) must cover the
//! request; a pinned host id, an architecture (a host that never said is `amd64`) and label
//! selectors (every pair must equal one of the host's labels) narrow the candidates; ties
//! are broken by the smaller host id, so the result is deterministic. The
//! caller reserves the chosen host's capacity atomically in the store and, if that races
//! and fails, calls [`place`] again without that host.

use fuse_types::{HostState, Resources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// How to choose among hosts that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Most free first (score = free_cpus·10000 + free_ram_mb): spreads load and blast radius.
    #[default]
    Spread,
    /// Least free first: packs hosts so others stay empty.
    Binpack,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spread" => Ok(Policy::Spread),
            "binpack" => Ok(Policy::Binpack),
            _ => Err(format!("unknown policy {s:?}; expected spread or binpack")),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Spread => "spread",
            Policy::Binpack => "binpack",
        })
    }
}

/// What the scheduler needs to know about a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView<'a> {
    /// Host id (tie-breaker).
    pub id: &'a str,
    /// Region label.
    pub region: &'a str,
    /// CPU architecture (`amd64` when the host never said).
    pub arch: &'a str,
    /// Operator labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Only `Active` hosts are candidates.
    pub state: HostState,
    /// Total resources.
    pub capacity: Resources,
    /// Already reserved.
    pub allocated: Resources,
}

impl HostView<'_> {
    /// Free resources, never negative.
    pub fn free(&self) -> Resources {
        self.capacity.minus(self.allocated)
    }
}

/// What one environment needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// cpus, ram_mb, storage_gb and vm_count (1).
    pub need: Resources,
    /// Required region; empty means any.
    pub region: &'a str,
    /// Required architecture; empty means any.
    pub arch: &'a str,
    /// Label selectors; each pair must be among the host's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Only this host; empty means any.
    pub host_id: &'a str,
}

impl<'a> Request<'a> {
    /// A request for `need` with no constraints.
    pub fn any(need: Resources) -> Request<'static> {
        Request {
            need,
            region: "",
            arch: "",
            labels: &NO_LABELS,
            host_id: "",
        }
    }
}

/// An empty label set, for views and requests without labels.
pub static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Why no host was chosen: counts per reason, for a 503 message that helps an operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct NoPlacement {
    /// Hosts considered.
    pub hosts: usize,
    /// Hosts not `active`.
    pub not_active: usize,
    /// Hosts in another region.
    pub wrong_region: usize,
    /// Hosts without enough free CPUs.
    pub short_cpus: usize,
    /// Hosts without enough free RAM.
    pub short_ram: usize,
    /// Hosts without enough free storage.
    pub short_storage: usize,
    /// Hosts at their VM limit.
    pub short_vm_slots: usize,
    /// Hosts other than the pinned one.
    pub not_pinned: usize,
    /// Hosts of another architecture.
    pub wrong_arch: usize,
    /// Hosts whose labels do not match the selectors.
    pub label_mismatch: usize,
    /// Why each considered host was refused (`host: reason`), in host order.
    pub reasons: Vec<String>,
}

/// How many per-host reasons a message names before it says "and N more".
const REASONS_SHOWN: usize = 8;

impl fmt::Display for NoPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hosts == 0 {
            return f.write_str("no hosts are registered");
        }
        write!(f, "no host has room ({} considered", self.hosts)?;
        for (n, what) in [
            (self.not_pinned, "not the pinned host"),
            (self.not_active, "not active"),
            (self.wrong_arch, "of another architecture"),
            (self.label_mismatch, "without the requested labels"),
            (self.wrong_region, "in another region"),
            (self.short_cpus, "short of cpus"),
            (self.short_ram, "short of ram"),
            (self.short_storage, "short of storage"),
            (self.short_vm_slots, "at their vm limit"),
        ] {
            if n > 0 {
                write!(f, "; {n} {what}")?;
            }
        }
        f.write_str(")")?;
        if !self.reasons.is_empty() {
            f.write_str(": ")?;
            for (i, r) in self.reasons.iter().take(REASONS_SHOWN).enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                f.write_str(r)?;
            }
            if self.reasons.len() > REASONS_SHOWN {
                write!(f, "; and {} more", self.reasons.len() - REASONS_SHOWN)?;
            }
        }
        Ok(())
    }
}

/// Chooses a host for `req`, or says why none fits.
pub fn place<'a>(
    hosts: &[HostView<'a>],
    req: &Request<'_>,
    policy: Policy,
) -> Result<&'a str, NoPlacement> {
    let mut why = NoPlacement {
        hosts: hosts.len(),
        ..NoPlacement::default()
    };
    let mut best: Option<(u128, &'a str)> = None;
    if !req.host_id.is_empty() && !hosts.iter().any(|h| h.id == req.host_id) {
        why.reasons
            .push(format!("host {} (pinned) is not registered", req.host_id));
    }
    for h in hosts {
        if !req.host_id.is_empty() && h.id != req.host_id {
            why.not_pinned += 1;
            continue;
        }
        let mut refuse = |n: &mut usize, reason: String| {
            *n += 1;
            why_reason(&mut why.reasons, h.id, reason);
        };
        if h.state != HostState::Active {
            refuse(&mut why.not_active, format!("state {}", h.state));
            continue;
        }
        if !req.region.is_empty() && h.region != req.region {
            refuse(
                &mut why.wrong_region,
                format!("region {:?}, not {:?}", h.region, req.region),
            );
            continue;
        }
        if !req.arch.is_empty() && h.arch != req.arch {
            refuse(
                &mut why.wrong_arch,
                format!("arch {}, not {}", h.arch, req.arch),
            );
            continue;
        }
        if let Some((k, v)) = req
            .labels
            .iter()
            .find(|(k, v)| h.labels.get(*k) != Some(*v))
        {
            let has = match h.labels.get(k) {
                Some(x) => format!("{k}={x}"),
                None => format!("no label {k}"),
            };
            refuse(&mut why.label_mismatch, format!("has {has}, wants {k}={v}"));
            continue;
        }
        let free = h.free();
        let mut short = Vec::new();
        if free.cpus < req.need.cpus {
            why.short_cpus += 1;
            short.push(format!("{} cpus free, {} needed", free.cpus, req.need.cpus));
        }
        if free.ram_mb < req.need.ram_mb {
            why.short_ram += 1;
            short.push(format!(
                "{} MiB ram free, {} needed",
                free.ram_mb, req.need.ram_mb
            ));
        }
        if free.storage_gb < req.need.storage_gb {
            why.short_storage += 1;
            short.push(format!(
                "{} GiB storage free, {} needed",
                free.storage_gb, req.need.storage_gb
            ));
        }
        if free.vm_count < req.need.vm_count {
            why.short_vm_slots += 1;
            short.push("at its vm limit".to_owned());
        }
        if !short.is_empty() {
            why_reason(&mut why.reasons, h.id, short.join(", "));
            continue;
        }
        let score = u128::from(free.cpus) * 10_000 + u128::from(free.ram_mb);
        let better = match best {
            None => true,
            Some((s, id)) => match policy {
                Policy::Spread => score > s || (score == s && h.id < id),
                Policy::Binpack => score < s || (score == s && h.id < id),
            },
        };
        if better {
            best = Some((score, h.id));
        }
    }
    best.map(|(_, id)| id).ok_or(why)
}

fn why_reason(reasons: &mut Vec<String>, host: &str, reason: String) {
    reasons.push(format!("{host}: {reason}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpus: u32, ram_mb: u64, storage_gb: u64, vm_count: u32) -> Resources {
        Resources {
            cpus,
            ram_mb,
            storage_gb,
            vm_count,
        }
    }

    fn host<'a>(id: &'a str, region: &'a str, cap: Resources, alloc: Resources) -> HostView<'a> {
        HostView {
            id,
            region,
            arch: "amd64",
            labels: &NO_LABELS,
            state: HostState::Active,
            capacity: cap,
            allocated: alloc,
        }
    }

    const BIG: Resources = Resources {
        cpus: 16,
        ram_mb: 32768,
        storage_gb: 500,
        vm_count: 100,
    };
    const NONE: Resources = Resources {
        cpus: 0,
        ram_mb: 0,
        storage_gb: 0,
        vm_count: 0,
    };

    static ZONE_A: std::sync::LazyLock<BTreeMap<String, String>> =
        std::sync::LazyLock::new(|| [("zone".to_owned(), "a".to_owned())].into());
    static ZONE_B_GPU: std::sync::LazyLock<BTreeMap<String, String>> =
        std::sync::LazyLock::new(|| {
            [
                ("gpu".to_owned(), "yes".to_owned()),
                ("zone".to_owned(), "b".to_owned()),
            ]
            .into()
        });

    fn req(cpus: u32, ram_mb: u64, storage_gb: u64) -> Request<'static> {
        Request::any(res(cpus, ram_mb, storage_gb, 1))
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            hosts: Vec<HostView<'static>>,
            req: Request<'static>,
            policy: Policy,
            want: Result<&'static str, fn(&NoPlacement) -> bool>,
        }
        let cordoned = |id: &'static str| HostView {
            state: HostState::Cordoned,
            ..host(id, "", BIG, NONE)
        };
        let cases = vec![
            Case {
                name: "no hosts",
                hosts: vec![],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Err(|w| w.hosts == 0),
            },
            Case {
                name: "all cordoned",
                hosts: vec![cordoned("a"), cordoned("b")],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Err(|w| w.not_active == 2),
            },
            Case {
                name: "unreachable and draining are not candidates",
                hosts: vec![
                    HostView {
                        state: HostState::Unreachable,
                        ..host("a", "", BIG, NONE)
                    },
                    HostView {
                        state: HostState::Draining,
                        ..host("b", "", BIG, NONE)
                    },
                ],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Err(|w| w.not_active == 2),
            },
            Case {
                name: "too few cpus",
                hosts: vec![host("a", "", res(4, 32768, 500, 100), res(3, 0, 0, 0))],
                req: req(2, 512, 1),
                policy: Policy::Spread,
                want: Err(|w| w.short_cpus == 1 && w.short_ram == 0),
            },
            Case {
                name: "too little ram",
                hosts: vec![host("a", "", res(16, 1024, 500, 100), res(0, 600, 0, 0))],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Err(|w| w.short_ram == 1 && w.short_cpus == 0),
            },
            Case {
                name: "too little storage",
                hosts: vec![host("a", "", res(16, 32768, 10, 100), res(0, 0, 10, 0))],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Err(|w| w.short_storage == 1),
            },
            Case {
                name: "no vm slots",
                hosts: vec![host("a", "", res(16, 32768, 500, 2), res(0, 0, 0, 2))],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Err(|w| w.short_vm_slots == 1),
            },
            Case {
                name: "region mismatch",
                hosts: vec![host("a", "eu", BIG, NONE)],
                req: Request {
                    region: "us",
                    ..Request::any(res(1, 512, 1, 1))
                },
                policy: Policy::Spread,
                want: Err(|w| w.wrong_region == 1),
            },
            Case {
                name: "region match picks the matching host even if smaller",
                hosts: vec![
                    host("a", "eu", BIG, NONE),
                    host("b", "us", res(2, 1024, 10, 2), NONE),
                ],
                req: Request {
                    region: "us",
                    ..Request::any(res(1, 512, 1, 1))
                },
                policy: Policy::Spread,
                want: Ok("b"),
            },
            Case {
                name: "pinned host is chosen over a bigger one",
                hosts: vec![
                    host("a", "", BIG, NONE),
                    host("b", "", res(2, 1024, 10, 2), NONE),
                ],
                req: Request {
                    host_id: "b",
                    ..req(1, 512, 1)
                },
                policy: Policy::Spread,
                want: Ok("b"),
            },
            Case {
                name: "pinned host without room: no fallback to another host",
                hosts: vec![
                    host("a", "", BIG, NONE),
                    host("b", "", res(1, 1024, 10, 2), NONE),
                ],
                req: Request {
                    host_id: "b",
                    ..req(2, 512, 1)
                },
                policy: Policy::Spread,
                want: Err(|w| {
                    w.not_pinned == 1
                        && w.short_cpus == 1
                        && w.reasons == ["b: 1 cpus free, 2 needed"]
                }),
            },
            Case {
                name: "pinned host that is not registered",
                hosts: vec![host("a", "", BIG, NONE)],
                req: Request {
                    host_id: "zz",
                    ..req(1, 512, 1)
                },
                policy: Policy::Spread,
                want: Err(|w| {
                    w.not_pinned == 1 && w.reasons == ["host zz (pinned) is not registered"]
                }),
            },
            Case {
                name: "arch: only hosts of that architecture",
                hosts: vec![
                    host("a", "", BIG, NONE),
                    HostView {
                        arch: "arm64",
                        ..host("b", "", res(2, 1024, 10, 2), NONE)
                    },
                ],
                req: Request {
                    arch: "arm64",
                    ..req(1, 512, 1)
                },
                policy: Policy::Spread,
                want: Ok("b"),
            },
            Case {
                name: "arch nobody has: the reason per host",
                hosts: vec![host("a", "", BIG, NONE), host("b", "", BIG, NONE)],
                req: Request {
                    arch: "arm64",
                    ..req(1, 512, 1)
                },
                policy: Policy::Spread,
                want: Err(|w| {
                    w.wrong_arch == 2
                        && w.reasons == ["a: arch amd64, not arm64", "b: arch amd64, not arm64"]
                }),
            },
            Case {
                name: "labels: every selector must match",
                hosts: vec![
                    HostView {
                        labels: &ZONE_A,
                        ..host("a", "", BIG, NONE)
                    },
                    HostView {
                        labels: &ZONE_B_GPU,
                        ..host("b", "", res(2, 1024, 10, 2), NONE)
                    },
                ],
                req: Request {
                    labels: &ZONE_B_GPU,
                    ..req(1, 512, 1)
                },
                policy: Policy::Spread,
                want: Ok("b"),
            },
            Case {
                name: "labels: a host with other values or none is refused, saying which",
                hosts: vec![
                    HostView {
                        labels: &ZONE_A,
                        ..host("a", "", BIG, NONE)
                    },
                    host("c", "", BIG, NONE),
                ],
                req: Request {
                    labels: &ZONE_B_GPU,
                    ..req(1, 512, 1)
                },
                policy: Policy::Spread,
                want: Err(|w| {
                    w.label_mismatch == 2
                        && w.reasons
                            == [
                                "a: has no label gpu, wants gpu=yes",
                                "c: has no label gpu, wants gpu=yes",
                            ]
                }),
            },
            Case {
                name: "no selectors: labels do not matter",
                hosts: vec![HostView {
                    labels: &ZONE_A,
                    ..host("a", "", BIG, NONE)
                }],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Ok("a"),
            },
            Case {
                name: "no region asked: any region",
                hosts: vec![host("a", "eu", BIG, NONE)],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Ok("a"),
            },
            Case {
                name: "spread picks most free",
                hosts: vec![
                    host("a", "", BIG, res(8, 0, 0, 1)),
                    host("b", "", BIG, res(2, 0, 0, 1)),
                    host("c", "", BIG, res(4, 0, 0, 1)),
                ],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Ok("b"),
            },
            Case {
                name: "binpack picks least free that fits",
                hosts: vec![
                    host("a", "", BIG, res(8, 0, 0, 1)),
                    host("b", "", BIG, res(2, 0, 0, 1)),
                    host("c", "", BIG, res(15, 0, 0, 1)),
                    host("d", "", BIG, res(16, 0, 0, 1)),
                ],
                req: req(1, 512, 1),
                policy: Policy::Binpack,
                want: Ok("c"),
            },
            Case {
                name: "ram breaks a cpu tie",
                hosts: vec![
                    host("a", "", BIG, res(0, 4096, 0, 0)),
                    host("b", "", BIG, res(0, 1024, 0, 0)),
                ],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Ok("b"),
            },
            Case {
                name: "tie goes to the smaller id (spread)",
                hosts: vec![host("b", "", BIG, NONE), host("a", "", BIG, NONE)],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Ok("a"),
            },
            Case {
                name: "tie goes to the smaller id (binpack)",
                hosts: vec![host("z", "", BIG, NONE), host("m", "", BIG, NONE)],
                req: req(1, 512, 1),
                policy: Policy::Binpack,
                want: Ok("m"),
            },
            Case {
                name: "exact fit",
                hosts: vec![host("a", "", res(2, 1024, 5, 3), res(1, 512, 4, 2))],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Ok("a"),
            },
            Case {
                name: "over-allocated host never underflows",
                hosts: vec![host("a", "", res(2, 1024, 5, 3), res(9, 9999, 99, 9))],
                req: req(1, 512, 1),
                policy: Policy::Spread,
                want: Err(|w| w.short_cpus == 1 && w.short_vm_slots == 1),
            },
        ];
        for c in cases {
            let got = place(&c.hosts, &c.req, c.policy);
            match (got, c.want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{}", c.name),
                (Err(e), Err(check)) => assert!(check(&e), "{}: {e:?}", c.name),
                (g, w) => panic!("{}: got {g:?}, want {:?}", c.name, w.map_err(|_| "err")),
            }
        }
    }

    #[test]
    fn message_names_the_reasons() {
        let hosts = [HostView {
            state: HostState::Cordoned,
            ..host("a", "", BIG, NONE)
        }];
        let err = place(&hosts, &req(1, 1, 1), Policy::Spread).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no host has room (1 considered; 1 not active): a: state cordoned"
        );
        assert_eq!(
            place(&[], &req(1, 1, 1), Policy::Spread)
                .unwrap_err()
                .to_string(),
            "no hosts are registered"
        );
    }

    /// Property: whatever is chosen fits, is active, and no other fitting host beats it.
    #[test]
    fn chosen_host_fits_and_is_optimal() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let ids: Vec<String> = (0..8).map(|i| format!("h{i}")).collect();
        let gpu: BTreeMap<String, String> = [("gpu".to_owned(), "a100".to_owned())].into();
        for _ in 0..2000 {
            let n = next(6) as usize;
            let hosts: Vec<HostView> = ids[..n]
                .iter()
                .map(|id| HostView {
                    id,
                    region: if next(2) == 0 { "eu" } else { "us" },
                    arch: if next(3) == 0 { "arm64" } else { "amd64" },
                    labels: if next(2) == 0 { &gpu } else { &NO_LABELS },
                    state: if next(5) == 0 {
                        HostState::Cordoned
                    } else {
                        HostState::Active
                    },
                    capacity: res(next(8) as u32, next(8) * 512, next(8), next(4) as u32),
                    allocated: res(next(4) as u32, next(4) * 512, next(4), next(3) as u32),
                })
                .collect();
            let pin = format!("h{}", next(10));
            let r = Request {
                need: res(1 + next(2) as u32, 512, 1, 1),
                region: if next(3) == 0 { "eu" } else { "" },
                arch: ["", "amd64", "arm64"][next(3) as usize],
                labels: if next(3) == 0 { &gpu } else { &NO_LABELS },
                host_id: if next(4) == 0 { &pin } else { "" },
            };
            for policy in [Policy::Spread, Policy::Binpack] {
                let fits = |h: &HostView| {
                    h.state == HostState::Active
                        && (r.region.is_empty() || h.region == r.region)
                        && (r.arch.is_empty() || h.arch == r.arch)
                        && (r.host_id.is_empty() || h.id == r.host_id)
                        && r.labels.iter().all(|(k, v)| h.labels.get(k) == Some(v))
                        && h.free().covers(r.need)
                };
                match place(&hosts, &r, policy) {
                    Ok(id) => {
                        let h = hosts.iter().find(|h| h.id == id).unwrap();
                        assert!(fits(h));
                        let score = |h: &HostView| {
                            u128::from(h.free().cpus) * 10_000 + u128::from(h.free().ram_mb)
                        };
                        for o in hosts.iter().filter(|o| fits(o)) {
                            match policy {
                                Policy::Spread => assert!(score(o) <= score(h)),
                                Policy::Binpack => assert!(score(o) >= score(h)),
                            }
                            if score(o) == score(h) {
                                assert!(h.id <= o.id);
                            }
                        }
                    }
                    Err(_) => assert!(!hosts.iter().any(fits)),
                }
            }
        }
    }
}
