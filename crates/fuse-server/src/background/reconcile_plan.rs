//! The reconciler's decisions as a pure function: from what the store intends (the
//! environments placed on a host), what the host reports (its VM list) and the clock, to a
//! list of [`Action`]s. No I/O and no clock of its own, so every rule is table-tested with
//! an injected time; `reconciler.rs` reads the inputs and executes the actions through the
//! lifecycle.
//!
//! The rules (DESIGN §4):
//! - **Tracked but missing**: a running or draining environment its host does not run →
//!   [`Action::FailMissing`] (the executor confirms with a per-VM read before acting). An
//!   empty list while environments are serving there is believed only when the next pass
//!   reads it again: a bad read never triggers mass failure.
//! - **Past `max_runtime_seconds`**: suspected on the first pass, failed on the next
//!   ([`Action::SuspectRuntime`], [`Action::FailRuntime`]); a suspicion not confirmed
//!   within `suspicion_ttl` is forgotten, so a clock jump or a slow pass never kills at once.
//! - **`destroying` and gone**: [`Action::Reap`]. **`failed` still holding capacity and
//!   gone**: [`Action::ReleaseFailed`].
//! - **Observations** of a serving VM: a healthcheck verdict that differs from the
//!   record → [`Action::Health`]; a link byte counter that moved → [`Action::Activity`];
//!   nothing (no API call, no exec, no traffic) for `idle_timeout_seconds` →
//!   [`Action::Idle`] (announced, then destroyed); an agent the guest's supervisor
//!   restarted [`CRASH_LOOP_RESTARTS`] times or more since the last recorded crash loop →
//!   [`Action::AgentCrashLoop`] (its `error` is set and published; the state stays).
//! - **Paused** (DESIGN §3): a running environment its host lists `paused` had its pause
//!   interrupted before it was recorded → [`Action::FinishPause`]; a paused one its host
//!   runs had its resume interrupted → [`Action::FinishResume`]; a paused one still holding
//!   more than its disk, untouched for the grace period (a resume that stopped between
//!   taking the room and asking the host) → [`Action::SettlePaused`]; one with a migration
//!   recorded → [`Action::RecoverMigration`] (the executor leaves a migration alone while
//!   the replica doing it is alive). A paused environment its host does not have at all
//!   fails as a running one does.
//! - **Untracked on the host**, older than the grace period, not dead-lettered:
//!   [`Action::DestroyOrphan`] (the executor re-reads the record first: a VM created since
//!   the store was read is never taken for an orphan).

use crate::app::lifecycle::expects_vm_on_host;
use fuse_store::VmRecord;
use fuse_types::hostagent::{AgentVm, HostVmState};
use fuse_types::{HostId, Timestamp, VmId, VmState};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Failed destroys of one orphan before it is dead-lettered.
pub const ORPHAN_ATTEMPTS: u32 = 5;

/// Agent restarts (after crashes, counted by the guest's supervisor) since the last
/// recorded crash loop that make a new one.
pub const CRASH_LOOP_RESTARTS: u32 = 3;

/// What the reconciler remembers about one host between passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostMemory {
    /// The previous list was empty while environments were serving there.
    pub empty_once: bool,
    /// Environments seen past their maximum runtime, and when last seen so.
    pub suspected: HashMap<VmId, Timestamp>,
}

/// Everything one host's plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The host.
    pub host: &'a HostId,
    /// What the host lists (read before the store).
    pub listed: &'a [AgentVm],
    /// The environments placed on the host that are not destroyed.
    pub tracked: &'a [VmRecord],
    /// Failed destroy attempts of orphans, by `<host>/<vm id>`.
    pub dead_letters: &'a HashMap<String, u32>,
    /// Now.
    pub now: Timestamp,
    /// Age before an untracked VM is destroyed.
    pub orphan_grace: Duration,
    /// How long a runtime suspicion lasts unconfirmed.
    pub suspicion_ttl: Duration,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The host listed nothing while `serving` environments run there; nothing is failed
    /// until the next pass reads the same.
    EmptyListUnconfirmed {
        /// Environments serving on the host.
        serving: usize,
    },
    /// A serving environment the host does not run: confirm, then fail it.
    FailMissing(VmRecord),
    /// A `destroying` environment the host no longer has: finish the destroy.
    Reap(VmRecord),
    /// A `failed` environment still holding capacity that the host no longer has: confirm,
    /// then release.
    ReleaseFailed(VmRecord),
    /// First pass past the maximum runtime: record the suspicion.
    SuspectRuntime(VmRecord),
    /// Second pass past the maximum runtime: fail and destroy it.
    FailRuntime(VmRecord),
    /// The host reports a healthcheck verdict other than the recorded one.
    Health(VmRecord, fuse_types::Health),
    /// The VM's network counter moved since it was last read: it was active.
    Activity(VmRecord, u64),
    /// Nothing touched the VM for its idle timeout: announce, then destroy it.
    Idle(VmRecord),
    /// The agent keeps crashing after its start: record it (the guest's restart count).
    AgentCrashLoop(VmRecord, u32),
    /// A running environment its host has paused: record the pause.
    FinishPause(VmRecord, AgentVm),
    /// A paused environment its host runs: record the resume.
    FinishResume(VmRecord, AgentVm),
    /// A paused environment holding more than its disk for a while: give the rest back.
    SettlePaused(VmRecord),
    /// A paused environment with a migration recorded: finish or undo it, unless the replica
    /// doing it is still alive.
    RecoverMigration(VmRecord),
    /// A VM nothing tracks: destroy it (counting failures toward the dead letter).
    DestroyOrphan {
        /// The VM as the host lists it.
        vm: AgentVm,
        /// Its dead-letter key, `<host>/<vm id>`.
        key: String,
    },
}

/// Whether `rec` has run longer than its `max_runtime_seconds` at `now`.
pub fn past_runtime(rec: &VmRecord, now: Timestamp) -> bool {
    if let Some(ends) = rec.extras.ends_at {
        // A moved limit (E2B's timeout) replaces the one counted from the start.
        return now > ends;
    }
    let Some(since) = rec.running_since else {
        return false;
    };
    let limit = Duration::from_secs(rec.spec.max_runtime_seconds.max(1));
    now > since && (now - since).unsigned_abs() > limit
}

/// Whether `rec` has been idle past its `idle_timeout_seconds` at `now` (its last
/// activity, or when it started running when nothing was seen since).
pub fn past_idle(rec: &VmRecord, now: Timestamp) -> bool {
    let limit = rec.spec.idle_timeout_seconds;
    if limit == 0 {
        return false;
    }
    let Some(since) = [rec.extras.last_active_at, rec.running_since]
        .into_iter()
        .flatten()
        .max()
    else {
        return false;
    };
    now > since && (now - since).unsigned_abs() > Duration::from_secs(limit)
}

/// The observation actions for a serving VM its host runs.
fn observe(rec: &VmRecord, vm: &AgentVm, now: Timestamp, out: &mut Vec<Action>) {
    if let Some(h) = &vm.health {
        let cur = rec.extras.health.as_ref();
        let differs = cur
            .is_none_or(|c| (c.state, c.failures, &c.message) != (h.state, h.failures, &h.message));
        if differs {
            out.push(Action::Health(rec.clone(), h.clone()));
        }
    }
    if let Some(n) = vm.agent_restarts {
        // A count below the recorded one is a new supervisor (a restored guest): from zero.
        let since = rec
            .extras
            .agent_restarts
            .filter(|&seen| seen <= n)
            .unwrap_or(0);
        if n - since >= CRASH_LOOP_RESTARTS {
            out.push(Action::AgentCrashLoop(rec.clone(), n));
        }
    }
    if rec.spec.idle_timeout_seconds == 0 {
        return;
    }
    let moved = match (vm.net_bytes, rec.extras.net_bytes) {
        (Some(now_b), Some(was)) => now_b != was,
        (Some(_), None) => true,
        _ => false,
    };
    if moved {
        out.push(Action::Activity(rec.clone(), vm.net_bytes.unwrap_or(0)));
    } else if past_idle(rec, now) {
        out.push(Action::Idle(rec.clone()));
    }
}

/// The plan for one host, and what to remember for the next pass.
pub fn plan(input: PlanInput<'_>, memory: &HostMemory) -> (Vec<Action>, HostMemory) {
    let mut actions = Vec::new();
    let mut next = HostMemory::default();
    let on_host: HashMap<&str, &AgentVm> =
        input.listed.iter().map(|v| (v.vm_id.as_str(), v)).collect();
    let serving = |r: &VmRecord| {
        matches!(
            r.state,
            VmState::Running | VmState::Draining | VmState::Paused
        )
    };
    let n_serving = input.tracked.iter().filter(|r| serving(r)).count();
    let believe_missing = if input.listed.is_empty() && n_serving > 0 {
        next.empty_once = true;
        if !memory.empty_once {
            actions.push(Action::EmptyListUnconfirmed { serving: n_serving });
        }
        memory.empty_once
    } else {
        true
    };
    for rec in input.tracked {
        let here = on_host.get(rec.id.as_str()).copied();
        match rec.state {
            VmState::Running | VmState::Draining => match here.map(|v| v.state) {
                None | Some(HostVmState::Stopped) => {
                    if believe_missing {
                        actions.push(Action::FailMissing(rec.clone()));
                    }
                }
                Some(HostVmState::Running) if past_runtime(rec, input.now) => {
                    let seen = memory.suspected.get(&rec.id).copied();
                    let fresh = seen.is_some_and(|t| {
                        input.now >= t && (input.now - t).unsigned_abs() < input.suspicion_ttl
                    });
                    if fresh {
                        actions.push(Action::FailRuntime(rec.clone()));
                    } else {
                        next.suspected.insert(rec.id.clone(), input.now);
                        actions.push(Action::SuspectRuntime(rec.clone()));
                    }
                }
                Some(HostVmState::Running) => {
                    if let Some(vm) = here {
                        observe(rec, vm, input.now, &mut actions);
                    }
                }
                Some(HostVmState::Paused) => {
                    if let Some(vm) = here.filter(|_| rec.state == VmState::Running) {
                        actions.push(Action::FinishPause(rec.clone(), vm.clone()));
                    }
                }
                // A state this control plane does not know: nothing to do.
                Some(_) => {}
            },
            VmState::Paused if rec.extras.migration.is_some() => {
                actions.push(Action::RecoverMigration(rec.clone()))
            }
            VmState::Paused => match here {
                None => {
                    if believe_missing {
                        actions.push(Action::FailMissing(rec.clone()));
                    }
                }
                Some(vm) if vm.state == HostVmState::Running && rec.extras.pool.is_none() => {
                    actions.push(Action::FinishResume(rec.clone(), vm.clone()))
                }
                Some(vm) if vm.state == HostVmState::Stopped => {
                    if believe_missing {
                        actions.push(Action::FailMissing(rec.clone()));
                    }
                }
                Some(_) => {
                    let held_more = rec.extras.pool.is_none()
                        && rec
                            .reserved
                            .is_some_and(|r| r != crate::app::pause::paused_size(&rec.spec));
                    let quiet = input.now > rec.updated_at
                        && (input.now - rec.updated_at).unsigned_abs() > input.orphan_grace;
                    if held_more && quiet {
                        actions.push(Action::SettlePaused(rec.clone()));
                    }
                }
            },
            VmState::Destroying if here.is_none() => actions.push(Action::Reap(rec.clone())),
            VmState::Failed if rec.reserved.is_some() && here.is_none() => {
                actions.push(Action::ReleaseFailed(rec.clone()))
            }
            _ => {}
        }
    }
    let live: HashSet<&str> = input
        .tracked
        .iter()
        .filter(|r| expects_vm_on_host(r))
        .map(|r| r.id.as_str())
        .collect();
    for vm in input.listed {
        if live.contains(vm.vm_id.as_str())
            || Duration::from_secs(vm.age_seconds) < input.orphan_grace
        {
            continue;
        }
        let key = format!("{}/{}", input.host, vm.vm_id);
        if input.dead_letters.get(&key).copied().unwrap_or(0) >= ORPHAN_ATTEMPTS {
            continue;
        }
        actions.push(Action::DestroyOrphan {
            vm: vm.clone(),
            key,
        });
    }
    (actions, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_store::conformance;
    use fuse_types::Resources;

    const T0: i64 = 1_800_000_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_timestamp(T0 + secs).unwrap()
    }

    fn host() -> HostId {
        HostId::parse("h1").unwrap()
    }

    /// A tracked environment in `state`, running since t=0 with a 100 s limit.
    fn env(task: &str, state: VmState) -> VmRecord {
        let mut r = conformance::vm(task, 1, 512);
        r.state = state;
        r.host_id = Some(host());
        r.spec.max_runtime_seconds = 100;
        r.running_since = Some(at(0));
        r.reserved = Some(Resources::for_spec(&r.spec));
        r
    }

    fn on_host(id: &str, state: HostVmState, age: u64) -> AgentVm {
        AgentVm {
            vm_id: id.into(),
            state,
            age_seconds: age,
            ..AgentVm::default()
        }
    }

    struct Case {
        name: &'static str,
        tracked: Vec<VmRecord>,
        listed: Vec<AgentVm>,
        dead: Vec<(&'static str, u32)>,
        now: i64,
        memory: HostMemory,
        want: Vec<&'static str>,
    }

    /// The actions, each as `kind:vm`.
    fn describe(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::EmptyListUnconfirmed { serving } => format!("empty-unconfirmed:{serving}"),
                Action::FailMissing(r) => format!("fail-missing:{}", r.id),
                Action::Reap(r) => format!("reap:{}", r.id),
                Action::ReleaseFailed(r) => format!("release:{}", r.id),
                Action::SuspectRuntime(r) => format!("suspect:{}", r.id),
                Action::FailRuntime(r) => format!("fail-runtime:{}", r.id),
                Action::DestroyOrphan { vm, .. } => format!("orphan:{}", vm.vm_id),
                Action::Health(r, h) => format!("health:{}:{}", r.id, h.state.as_str()),
                Action::Activity(r, b) => format!("activity:{}:{b}", r.id),
                Action::Idle(r) => format!("idle:{}", r.id),
                Action::AgentCrashLoop(r, n) => format!("crash-loop:{}:{n}", r.id),
                Action::FinishPause(r, _) => format!("finish-pause:{}", r.id),
                Action::FinishResume(r, _) => format!("finish-resume:{}", r.id),
                Action::SettlePaused(r) => format!("settle-paused:{}", r.id),
                Action::RecoverMigration(r) => format!("recover-migration:{}", r.id),
            })
            .collect()
    }

    fn run(c: &Case) -> (Vec<String>, HostMemory) {
        let h = host();
        let dead: HashMap<String, u32> = c
            .dead
            .iter()
            .map(|(k, n)| (format!("h1/{k}"), *n))
            .collect();
        let (actions, next) = plan(
            PlanInput {
                host: &h,
                listed: &c.listed,
                tracked: &c.tracked,
                dead_letters: &dead,
                now: at(c.now),
                orphan_grace: Duration::from_secs(120),
                suspicion_ttl: Duration::from_secs(90),
            },
            &c.memory,
        );
        (describe(&actions), next)
    }

    #[test]
    fn the_rules_as_a_table() {
        use HostVmState::{Running as R, Stopped as S, Unknown as U};
        use VmState::*;
        let suspected = |id: &str, t: i64| HostMemory {
            empty_once: false,
            suspected: [(VmId::parse(id).unwrap(), at(t))].into(),
        };
        // A paused environment: its reservation is its disk alone (updated at t=0).
        let paused = |task: &str| {
            let mut r = env(task, Paused);
            r.reserved = Some(crate::app::pause::paused_size(&r.spec));
            r.updated_at = at(0);
            r
        };
        let paused_holding_all = |task: &str| {
            let mut r = paused(task);
            r.reserved = Some(Resources::for_spec(&r.spec));
            r
        };
        let migrating = |task: &str| {
            let mut r = paused(task);
            r.extras.migration = Some(fuse_store::Migration {
                target_host_id: HostId::parse("h2").unwrap(),
                source_host_id: host(),
                replica: "replica-x".into(),
                started_at: at(0),
                was_running: true,
            });
            r
        };
        let pool_member = |task: &str| {
            let mut r = paused_holding_all(task);
            r.extras.pool = Some("base".into());
            r
        };
        use HostVmState::Paused as P;
        let cases = vec![
            Case {
                name: "paused: a pause its host finished is recorded; a resume its host finished too",
                tracked: vec![env("a", Running), paused("b"), env("c", Draining)],
                listed: vec![
                    on_host("fuse-a", P, 5),
                    on_host("fuse-b", R, 5),
                    on_host("fuse-c", P, 5),
                ],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["finish-pause:fuse-a", "finish-resume:fuse-b"],
            },
            Case {
                name: "paused: a VM gone from its host fails; one stopped too",
                tracked: vec![paused("a"), paused("b"), paused("c")],
                listed: vec![on_host("fuse-b", S, 5), on_host("fuse-c", P, 5)],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["fail-missing:fuse-a", "fail-missing:fuse-b"],
            },
            Case {
                name: "paused: holding its full size past the grace is settled, not before; warm-pool members keep theirs",
                tracked: vec![paused_holding_all("a"), paused("b"), pool_member("c")],
                listed: vec![
                    on_host("fuse-a", P, 5),
                    on_host("fuse-b", P, 5),
                    on_host("fuse-c", P, 5),
                ],
                dead: vec![],
                now: 121,
                memory: HostMemory::default(),
                want: vec!["settle-paused:fuse-a"],
            },
            Case {
                name: "paused: a resume in progress (full size, recent) is left alone",
                tracked: vec![paused_holding_all("a")],
                listed: vec![on_host("fuse-a", P, 5)],
                dead: vec![],
                now: 60,
                memory: HostMemory::default(),
                want: vec![],
            },
            Case {
                name: "paused: a migration is recovered whatever the host lists; a warm member running is not resumed",
                tracked: vec![migrating("a"), pool_member("b")],
                listed: vec![on_host("fuse-b", R, 5)],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["recover-migration:fuse-a"],
            },
            Case {
                name: "paused: an empty list is not believed on the first pass",
                tracked: vec![paused("a")],
                listed: vec![],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["empty-unconfirmed:1"],
            },
            Case {
                name: "all well",
                tracked: vec![env("a", Running), env("b", Draining)],
                listed: vec![on_host("fuse-a", R, 5), on_host("fuse-b", R, 5)],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec![],
            },
            Case {
                name: "missing and stopped VMs fail; an unknown state is left alone",
                tracked: vec![env("a", Running), env("b", Draining), env("c", Running)],
                listed: vec![on_host("fuse-b", S, 5), on_host("fuse-c", U, 5)],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["fail-missing:fuse-a", "fail-missing:fuse-b"],
            },
            Case {
                name: "an empty list is not believed on the first pass",
                tracked: vec![env("a", Running), env("b", Running)],
                listed: vec![],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["empty-unconfirmed:2"],
            },
            Case {
                name: "an empty list read twice is believed",
                tracked: vec![env("a", Running)],
                listed: vec![],
                dead: vec![],
                now: 50,
                memory: HostMemory {
                    empty_once: true,
                    ..HostMemory::default()
                },
                want: vec!["fail-missing:fuse-a"],
            },
            Case {
                name: "an empty list with only provisioning VMs is believed (nothing to fail)",
                tracked: vec![env("a", Provisioning)],
                listed: vec![],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec![],
            },
            Case {
                name: "past the runtime: suspected first",
                tracked: vec![env("a", Running)],
                listed: vec![on_host("fuse-a", R, 500)],
                dead: vec![],
                now: 101,
                memory: HostMemory::default(),
                want: vec!["suspect:fuse-a"],
            },
            Case {
                name: "past the runtime on the next pass: failed",
                tracked: vec![env("a", Running)],
                listed: vec![on_host("fuse-a", R, 500)],
                dead: vec![],
                now: 130,
                memory: suspected("fuse-a", 101),
                want: vec!["fail-runtime:fuse-a"],
            },
            Case {
                name: "a stale suspicion is suspected again, not acted on",
                tracked: vec![env("a", Running)],
                listed: vec![on_host("fuse-a", R, 500)],
                dead: vec![],
                now: 400,
                memory: suspected("fuse-a", 101),
                want: vec!["suspect:fuse-a"],
            },
            Case {
                name: "a suspicion from the future (clock jumped back) is not acted on",
                tracked: vec![env("a", Running)],
                listed: vec![on_host("fuse-a", R, 500)],
                dead: vec![],
                now: 120,
                memory: suspected("fuse-a", 300),
                want: vec!["suspect:fuse-a"],
            },
            Case {
                name: "destroying and gone: reaped; failed with capacity and gone: released",
                tracked: vec![env("a", Destroying), env("b", Failed), env("c", Destroying)],
                listed: vec![on_host("fuse-c", R, 500)],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["reap:fuse-a", "release:fuse-b"],
            },
            Case {
                name: "orphans past the grace are destroyed unless dead-lettered",
                tracked: vec![env("a", Running)],
                listed: vec![
                    on_host("fuse-a", R, 500),
                    on_host("fuse-young", R, 119),
                    on_host("fuse-old", R, 121),
                    on_host("fuse-dead", R, 900),
                    on_host("fuse-retry", R, 900),
                ],
                dead: vec![("fuse-dead", ORPHAN_ATTEMPTS), ("fuse-retry", 2)],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["orphan:fuse-old", "orphan:fuse-retry"],
            },
            Case {
                name: "a failed VM without capacity is not live: its remains are an orphan",
                tracked: vec![{
                    let mut r = env("f", Failed);
                    r.reserved = None;
                    r
                }],
                listed: vec![on_host("fuse-f", S, 500)],
                dead: vec![],
                now: 50,
                memory: HostMemory::default(),
                want: vec!["orphan:fuse-f"],
            },
        ];
        for c in &cases {
            let (got, _) = run(c);
            assert_eq!(got, c.want, "case {:?}", c.name);
        }
    }

    #[test]
    fn memory_carries_only_what_the_next_pass_needs() {
        let c = Case {
            name: "memory",
            tracked: vec![env("a", VmState::Running)],
            listed: vec![],
            dead: vec![],
            now: 101,
            memory: HostMemory::default(),
            want: vec![],
        };
        let (_, next) = run(&c);
        assert!(next.empty_once, "an empty read is remembered");
        let c2 = Case {
            listed: vec![on_host("fuse-a", HostVmState::Running, 500)],
            memory: next,
            ..c
        };
        let (got, next2) = run(&c2);
        assert_eq!(got, ["suspect:fuse-a"]);
        assert!(!next2.empty_once, "a non-empty read clears it");
        assert_eq!(next2.suspected.len(), 1);
        // A VM that is back within its limit (its record changed) is forgotten.
        let mut within = env("a", VmState::Running);
        within.running_since = Some(at(90));
        let c3 = Case {
            tracked: vec![within],
            memory: next2,
            ..c2
        };
        let (got, next3) = run(&c3);
        assert!(got.is_empty());
        assert!(next3.suspected.is_empty());
    }

    fn health(state: fuse_types::HealthState, failures: u32) -> fuse_types::Health {
        fuse_types::Health {
            state,
            since: Some(at(0)),
            failures,
            message: if failures > 0 {
                "refused".into()
            } else {
                String::new()
            },
        }
    }

    /// A running environment with a 30 s idle timeout, last active at `active`.
    fn idle_env(task: &str, active: Option<i64>, bytes: Option<u64>) -> VmRecord {
        let mut r = env(task, VmState::Running);
        r.spec.max_runtime_seconds = 10_000;
        r.spec.idle_timeout_seconds = 30;
        r.extras.last_active_at = active.map(at);
        r.extras.net_bytes = bytes;
        r
    }

    #[test]
    fn agent_crash_loops_are_counted_from_the_last_one_recorded() {
        let listed = |restarts: Option<u32>| AgentVm {
            agent_restarts: restarts,
            ..on_host("fuse-a", HostVmState::Running, 5)
        };
        let rec = |seen: Option<u32>| {
            let mut r = env("a", VmState::Running);
            r.spec.max_runtime_seconds = 10_000;
            r.extras.agent_restarts = seen;
            r
        };
        let cases: Vec<(&str, VmRecord, AgentVm, Vec<&str>)> = vec![
            (
                "a host that does not say: nothing",
                rec(None),
                listed(None),
                vec![],
            ),
            (
                "a restart or two: nothing",
                rec(None),
                listed(Some(2)),
                vec![],
            ),
            (
                "three restarts: a crash loop",
                rec(None),
                listed(Some(3)),
                vec!["crash-loop:fuse-a:3"],
            ),
            (
                "the recorded loop is not news",
                rec(Some(3)),
                listed(Some(5)),
                vec![],
            ),
            (
                "three more since the recorded one: again",
                rec(Some(3)),
                listed(Some(6)),
                vec!["crash-loop:fuse-a:6"],
            ),
            (
                "a count below the recorded one starts from zero (a new supervisor)",
                rec(Some(9)),
                listed(Some(4)),
                vec!["crash-loop:fuse-a:4"],
            ),
        ];
        for (name, rec, vm, want) in cases {
            let c = Case {
                name,
                tracked: vec![rec],
                listed: vec![vm],
                dead: vec![],
                now: 10,
                memory: HostMemory::default(),
                want,
            };
            assert_eq!(run(&c).0, c.want, "{}", c.name);
        }
    }

    #[test]
    fn observations_health_activity_and_idle() {
        use fuse_types::HealthState::{Failing, Passing};
        let listed = |bytes: Option<u64>, h: Option<fuse_types::Health>| AgentVm {
            net_bytes: bytes,
            health: h,
            ..on_host("fuse-a", HostVmState::Running, 5)
        };
        let mut with_health = idle_env("a", None, None);
        with_health.spec.idle_timeout_seconds = 0;
        with_health.extras.health = Some(health(Passing, 0));
        let cases: Vec<(&str, VmRecord, AgentVm, i64, Vec<&str>)> = vec![
            (
                "the same verdict is not news",
                with_health.clone(),
                listed(None, Some(health(Passing, 0))),
                10,
                vec![],
            ),
            (
                "a new verdict is recorded",
                with_health.clone(),
                listed(None, Some(health(Failing, 3))),
                10,
                vec!["health:fuse-a:failing"],
            ),
            (
                "a failure count that moved is recorded too",
                with_health.clone(),
                listed(None, Some(health(Passing, 1))),
                10,
                vec!["health:fuse-a:passing"],
            ),
            (
                "a host that reports no health changes nothing",
                with_health,
                listed(None, None),
                10,
                vec![],
            ),
            (
                "traffic is activity, even past the limit",
                idle_env("a", Some(0), Some(100)),
                listed(Some(150), None),
                100,
                vec!["activity:fuse-a:150"],
            ),
            (
                "no traffic within the limit: nothing",
                idle_env("a", Some(0), Some(100)),
                listed(Some(100), None),
                30,
                vec![],
            ),
            (
                "no traffic past the limit: idle",
                idle_env("a", Some(0), Some(100)),
                listed(Some(100), None),
                31,
                vec!["idle:fuse-a"],
            ),
            (
                "never active: counted from when it started running",
                idle_env("a", None, None),
                listed(None, None),
                31,
                vec!["idle:fuse-a"],
            ),
            (
                "an API call after the start moves the clock",
                idle_env("a", Some(20), None),
                listed(None, None),
                31,
                vec![],
            ),
        ];
        for (name, rec, vm, now, want) in cases {
            let c = Case {
                name,
                tracked: vec![rec],
                listed: vec![vm],
                dead: vec![],
                now,
                memory: HostMemory::default(),
                want,
            };
            assert_eq!(run(&c).0, c.want, "{}", c.name);
        }
        // No idle timeout: traffic is not even recorded.
        let mut r = idle_env("a", None, Some(1));
        r.spec.idle_timeout_seconds = 0;
        let c = Case {
            name: "no limit",
            tracked: vec![r],
            listed: vec![listed(Some(9), None)],
            dead: vec![],
            now: 10_000,
            memory: HostMemory::default(),
            want: vec![],
        };
        assert_eq!(run(&c).0, c.want, "{}", c.name);
    }

    #[test]
    fn runtime_limit_is_strict_and_needs_a_start() {
        let mut r = env("a", VmState::Running);
        assert!(!past_runtime(&r, at(100)));
        assert!(past_runtime(&r, at(101)));
        assert!(!past_runtime(&r, at(-5)), "a clock behind the start");
        r.running_since = None;
        assert!(!past_runtime(&r, at(10_000)));
    }
}
