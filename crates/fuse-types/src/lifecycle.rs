//! The environment lifecycle as one typed state machine: a table of
//! (state, event) → (next state, effects). It is pure data; the control plane's
//! `app::lifecycle` executes a row (persist, audit, capacity, publish) and the store checks
//! every state change it writes against [`VmState::can_transition_to`], which is derived
//! from this table. Adding a state (`paused`) or a verb is adding rows here; the exhaustive
//! tests below print the table, so a change to the machine is a visible diff.
//!
//! A row's `from` is `None` for the event that makes the record (`Create`). Rows whose next
//! state equals their state and that carry no `Persist` effect are announcements (`lost`,
//! `found`): they are published and audited, never written to the record.

use crate::VmState;
use std::fmt;

/// Everything that can happen to an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A create: the record is written and its capacity reserved on a host in one step.
    Create,
    /// No host had room: the new record fails at once.
    NoRoom,
    /// Every provisioning step succeeded; the agent runs.
    Provisioned,
    /// A provisioning step failed (or the provision ran out of time).
    ProvisionFailed,
    /// The replica provisioning it stopped, or the provision never finished (recovery).
    Abandoned,
    /// Drain asked (from `running`, or again from `draining` after a drain command failed).
    Drain,
    /// The drain command failed or timed out; the environment stays `draining`.
    DrainFailed,
    /// Delete asked; wins over any state.
    Destroy,
    /// The host did not confirm a destroy; the reconciler or recovery finishes it.
    DestroyDeferred,
    /// The host confirmed the VM is gone.
    DestroyConfirmed,
    /// The host no longer runs the VM (reconcile).
    VanishedOnHost,
    /// The VM ran past its `max_runtime_seconds` (reconcile, on the second pass).
    RuntimeExceeded,
    /// A failed VM's host confirmed it holds nothing: its reservation is returned.
    HostConfirmedGone,
    /// New credentials were uploaded and the agent restarted.
    TokenRotated,
    /// A snapshot was restored into the VM.
    Restored,
    /// The VM's host stopped answering (announced as `lost`; nothing is written).
    HostLost,
    /// The VM's host answers again and still runs it (announced with its state).
    HostFound,
    /// The healthcheck's verdict changed (kept on the record, sent as a `health` event).
    HealthChanged,
    /// Nothing touched the environment for its `idle_timeout_seconds` (announced as
    /// `idle`; a destroy follows).
    Idle,
    /// A port was published at runtime (`?action=expose`; kept in the record's extras).
    PortExposed,
    /// The egress rules were replaced live (`PUT …/egress`; kept in the record's extras).
    EgressChanged,
    /// The agent crashed again and again after it came up (the guest's supervisor keeps
    /// restarting it): the reason is recorded as `error` and published; the environment
    /// keeps its state (its VM still runs, and the agent may recover).
    AgentCrashLoop,
    /// The host paused the VM (`?action=pause`, or the idle timeout with `on_idle: pause`):
    /// its memory and disk are kept there and its CPU and memory are given back.
    Pause,
    /// The host could not pause it; it keeps running (the reason is recorded).
    PauseFailed,
    /// The host resumed it (on its own host, or on another one with room): it holds its
    /// full size again.
    Resume,
    /// The host could not resume it; it stays paused with its artifacts (the reason is
    /// recorded).
    ResumeFailed,
    /// A cold migration began: the target is recorded, so an interruption is finished or
    /// undone by recovery.
    MigrateStarted,
    /// The artifacts arrived on the target and the VM runs there; the source is destroyed.
    Migrated,
    /// The migration stopped short; the VM stays paused at its source (the reason is
    /// recorded) and is resumed there.
    MigrateFailed,
    /// A warm-pool member was restored from its template and waits, paused, to be drawn.
    Warmed,
    /// A create drew this warm-pool member: its VM now belongs to the new environment.
    Drawn,
    /// When the environment's time is up moved (E2B's sandbox timeout; kept in the record's
    /// extras as `ends_at`).
    TimeoutChanged,
}

impl Event {
    /// Every event, for exhaustive tests.
    pub const ALL: [Event; 32] = [
        Event::Create,
        Event::NoRoom,
        Event::Provisioned,
        Event::ProvisionFailed,
        Event::Abandoned,
        Event::Drain,
        Event::DrainFailed,
        Event::Destroy,
        Event::DestroyDeferred,
        Event::DestroyConfirmed,
        Event::VanishedOnHost,
        Event::RuntimeExceeded,
        Event::HostConfirmedGone,
        Event::TokenRotated,
        Event::Restored,
        Event::HostLost,
        Event::HostFound,
        Event::HealthChanged,
        Event::Idle,
        Event::PortExposed,
        Event::EgressChanged,
        Event::AgentCrashLoop,
        Event::Pause,
        Event::PauseFailed,
        Event::Resume,
        Event::ResumeFailed,
        Event::MigrateStarted,
        Event::Migrated,
        Event::MigrateFailed,
        Event::Warmed,
        Event::Drawn,
        Event::TimeoutChanged,
    ];

    /// The spelling in audit events and logs (snake_case).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Create => "create",
            Event::NoRoom => "no_room",
            Event::Provisioned => "provisioned",
            Event::ProvisionFailed => "provision_failed",
            Event::Abandoned => "abandoned",
            Event::Drain => "drain",
            Event::DrainFailed => "drain_failed",
            Event::Destroy => "destroy",
            Event::DestroyDeferred => "destroy_deferred",
            Event::DestroyConfirmed => "destroy_confirmed",
            Event::VanishedOnHost => "vanished_on_host",
            Event::RuntimeExceeded => "runtime_exceeded",
            Event::HostConfirmedGone => "host_confirmed_gone",
            Event::TokenRotated => "token_rotated",
            Event::Restored => "restored",
            Event::HostLost => "lost",
            Event::HostFound => "found",
            Event::HealthChanged => "health_changed",
            Event::Idle => "idle",
            Event::PortExposed => "port_exposed",
            Event::EgressChanged => "egress_changed",
            Event::AgentCrashLoop => "agent_crash_loop",
            Event::Pause => "pause",
            Event::PauseFailed => "pause_failed",
            Event::Resume => "resume",
            Event::ResumeFailed => "resume_failed",
            Event::MigrateStarted => "migrate_started",
            Event::Migrated => "migrated",
            Event::MigrateFailed => "migrate_failed",
            Event::Warmed => "warmed",
            Event::Drawn => "drawn",
            Event::TimeoutChanged => "timeout_changed",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What executing a row does, in the order the executor applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// The event carries an error text: it is redacted (every secret value of the
    /// environment replaced) and stored as the record's `error`.
    RecordError,
    /// A stored `error` is cleared.
    ClearError,
    /// The record is written, generation-checked (a `Destroy` is written whatever the
    /// generation: a delete wins), with its audit event in the same atomic step.
    Persist,
    /// Host capacity is reserved for the VM in the same atomic step (placement).
    Reserve,
    /// The VM's reservation is returned to its host in the same atomic step, exactly once.
    Release,
    /// As `Release`, but only when the caller confirms the host holds nothing of the VM;
    /// otherwise the reservation stays until recovery or the reconciler confirms it.
    ReleaseIfGone,
    /// The stored per-VM secrets are forgotten.
    ForgetSecrets,
    /// An audit event is appended on its own (announcements and non-state changes).
    Audit,
    /// The SSE event is published (to every replica).
    Publish,
    /// The VM's reservation changes size, or moves to another host, in the same step as the
    /// write (pause: storage only; resume and migration: the full size, on the host the VM
    /// now runs on), checked against that host's capacity.
    Resize,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The state the row applies in (`None`: no record yet).
    pub from: Option<VmState>,
    /// What happened.
    pub event: Event,
    /// The state after it.
    pub to: VmState,
    /// What executing it does.
    pub effects: &'static [Effect],
}

impl Row {
    /// Whether executing the row does `e`.
    pub fn does(&self, e: Effect) -> bool {
        self.effects.contains(&e)
    }

    /// Whether the row writes the record.
    pub fn persists(&self) -> bool {
        self.does(Effect::Persist)
    }

    /// Whether the row changes the state.
    pub fn changes_state(&self) -> bool {
        self.from != Some(self.to)
    }
}

use Effect::*;
use VmState::*;

/// A row, spelled compactly.
const fn row(from: Option<VmState>, event: Event, to: VmState, effects: &'static [Effect]) -> Row {
    Row {
        from,
        event,
        to,
        effects,
    }
}

/// Effects of a transition into `failed` with a reason.
const FAIL: &[Effect] = &[RecordError, Persist, Publish];
/// Effects of a transition into `failed` whose VM the caller may have removed.
const FAIL_RELEASE_IF_GONE: &[Effect] = &[RecordError, Persist, ReleaseIfGone, Publish];
/// Effects of a transition into `failed` whose VM is known gone from its host.
const FAIL_RELEASE: &[Effect] = &[RecordError, Persist, Release, Publish];
/// Effects of a delete.
const DESTROY: &[Effect] = &[Persist, Publish];
/// Effects of an announcement.
const ANNOUNCE: &[Effect] = &[Audit, Publish];

/// The whole lifecycle. Any (state, event) pair not listed is an illegal transition.
pub const TABLE: &[Row] = &[
    row(
        None,
        Event::Create,
        Provisioning,
        &[Persist, Reserve, Publish],
    ),
    row(Some(Provisioning), Event::NoRoom, Failed, FAIL),
    row(
        Some(Provisioning),
        Event::Provisioned,
        Running,
        &[ClearError, Persist, Publish],
    ),
    row(
        Some(Provisioning),
        Event::ProvisionFailed,
        Failed,
        FAIL_RELEASE_IF_GONE,
    ),
    row(
        Some(Provisioning),
        Event::Abandoned,
        Failed,
        FAIL_RELEASE_IF_GONE,
    ),
    row(Some(Provisioning), Event::Destroy, Destroying, DESTROY),
    row(
        Some(Running),
        Event::Drain,
        Draining,
        &[ClearError, Persist, Publish],
    ),
    row(Some(Running), Event::Destroy, Destroying, DESTROY),
    row(Some(Running), Event::VanishedOnHost, Failed, FAIL_RELEASE),
    row(Some(Running), Event::RuntimeExceeded, Failed, FAIL),
    row(
        Some(Running),
        Event::TokenRotated,
        Running,
        &[Persist, Audit],
    ),
    row(Some(Running), Event::Restored, Running, &[Persist, Audit]),
    row(Some(Running), Event::HostLost, Running, ANNOUNCE),
    row(Some(Running), Event::HostFound, Running, ANNOUNCE),
    row(
        Some(Running),
        Event::HealthChanged,
        Running,
        &[Persist, Publish],
    ),
    row(Some(Running), Event::Idle, Running, ANNOUNCE),
    row(
        Some(Running),
        Event::PortExposed,
        Running,
        &[Persist, Audit],
    ),
    row(
        Some(Running),
        Event::EgressChanged,
        Running,
        &[Persist, Audit],
    ),
    row(
        Some(Running),
        Event::TimeoutChanged,
        Running,
        &[Persist, Audit],
    ),
    row(
        Some(Running),
        Event::AgentCrashLoop,
        Running,
        &[RecordError, Persist, Publish],
    ),
    // A drain may be retried, e.g. after its command failed.
    row(
        Some(Draining),
        Event::Drain,
        Draining,
        &[ClearError, Persist, Publish],
    ),
    row(
        Some(Draining),
        Event::DrainFailed,
        Draining,
        &[RecordError, Persist, Publish],
    ),
    row(Some(Draining), Event::Destroy, Destroying, DESTROY),
    row(Some(Draining), Event::VanishedOnHost, Failed, FAIL_RELEASE),
    row(Some(Draining), Event::RuntimeExceeded, Failed, FAIL),
    row(Some(Draining), Event::Restored, Draining, &[Persist, Audit]),
    row(Some(Draining), Event::HostLost, Draining, ANNOUNCE),
    row(Some(Draining), Event::HostFound, Draining, ANNOUNCE),
    row(
        Some(Draining),
        Event::HealthChanged,
        Draining,
        &[Persist, Publish],
    ),
    row(Some(Draining), Event::Idle, Draining, ANNOUNCE),
    row(
        Some(Draining),
        Event::PortExposed,
        Draining,
        &[Persist, Audit],
    ),
    row(
        Some(Draining),
        Event::EgressChanged,
        Draining,
        &[Persist, Audit],
    ),
    row(
        Some(Draining),
        Event::TimeoutChanged,
        Draining,
        &[Persist, Audit],
    ),
    row(
        Some(Draining),
        Event::AgentCrashLoop,
        Draining,
        &[RecordError, Persist, Publish],
    ),
    row(
        Some(Running),
        Event::Pause,
        Paused,
        &[ClearError, Persist, Resize, Publish],
    ),
    row(
        Some(Running),
        Event::PauseFailed,
        Running,
        &[RecordError, Persist, Publish],
    ),
    row(
        Some(Provisioning),
        Event::Warmed,
        Paused,
        &[ClearError, Persist, Publish],
    ),
    row(
        Some(Paused),
        Event::Resume,
        Running,
        &[ClearError, Persist, Resize, Publish],
    ),
    row(
        Some(Paused),
        Event::ResumeFailed,
        Paused,
        &[RecordError, Persist, Publish],
    ),
    row(
        Some(Paused),
        Event::MigrateStarted,
        Paused,
        &[Persist, Audit],
    ),
    row(
        Some(Paused),
        Event::TimeoutChanged,
        Paused,
        &[Persist, Audit],
    ),
    row(
        Some(Paused),
        Event::Migrated,
        Running,
        &[ClearError, Persist, Resize, Publish],
    ),
    row(
        Some(Paused),
        Event::MigrateFailed,
        Paused,
        &[RecordError, Persist, Publish],
    ),
    row(
        Some(Paused),
        Event::Drawn,
        Destroyed,
        &[Persist, Release, ForgetSecrets, Publish],
    ),
    row(Some(Paused), Event::Destroy, Destroying, DESTROY),
    row(Some(Paused), Event::VanishedOnHost, Failed, FAIL_RELEASE),
    row(Some(Paused), Event::HostLost, Paused, ANNOUNCE),
    row(Some(Paused), Event::HostFound, Paused, ANNOUNCE),
    row(Some(Failed), Event::Destroy, Destroying, DESTROY),
    row(Some(Failed), Event::HostConfirmedGone, Failed, &[Release]),
    // A repeated delete is a no-op, not an error.
    row(Some(Destroying), Event::Destroy, Destroying, &[]),
    row(
        Some(Destroying),
        Event::DestroyDeferred,
        Destroying,
        &[RecordError, Persist, Publish],
    ),
    row(
        Some(Destroying),
        Event::DestroyConfirmed,
        Destroyed,
        &[Persist, Release, ForgetSecrets, Publish],
    ),
    row(Some(Destroyed), Event::Destroy, Destroyed, &[]),
];

/// An event that is not allowed in the environment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not allowed {}", match .from { Some(s) => format!("while {s}"), None => "without an environment".to_owned() })]
pub struct IllegalEvent {
    /// The state it happened in.
    pub from: Option<VmState>,
    /// The refused event.
    pub event: Event,
}

/// The row for `event` in state `from`, or the typed refusal.
pub fn step(from: Option<VmState>, event: Event) -> Result<&'static Row, IllegalEvent> {
    TABLE
        .iter()
        .find(|r| r.from == from && r.event == event)
        .ok_or(IllegalEvent { from, event })
}

/// Whether some event changes the state from `from` to `to` (what the store accepts as a
/// state change; a row that keeps the state writes no state).
pub fn state_change_allowed(from: VmState, to: VmState) -> bool {
    from != to
        && TABLE
            .iter()
            .any(|r| r.from == Some(from) && r.to == to && r.persists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table written out as text, so any change to the machine is a visible diff here.
    #[test]
    fn the_table_is_exactly_this() {
        let text: Vec<String> = TABLE
            .iter()
            .map(|r| {
                format!(
                    "{} + {} -> {} {:?}",
                    r.from.map(|s| s.as_str()).unwrap_or("-"),
                    r.event,
                    r.to,
                    r.effects
                )
            })
            .collect();
        let want = [
            "- + create -> provisioning [Persist, Reserve, Publish]",
            "provisioning + no_room -> failed [RecordError, Persist, Publish]",
            "provisioning + provisioned -> running [ClearError, Persist, Publish]",
            "provisioning + provision_failed -> failed [RecordError, Persist, ReleaseIfGone, Publish]",
            "provisioning + abandoned -> failed [RecordError, Persist, ReleaseIfGone, Publish]",
            "provisioning + destroy -> destroying [Persist, Publish]",
            "running + drain -> draining [ClearError, Persist, Publish]",
            "running + destroy -> destroying [Persist, Publish]",
            "running + vanished_on_host -> failed [RecordError, Persist, Release, Publish]",
            "running + runtime_exceeded -> failed [RecordError, Persist, Publish]",
            "running + token_rotated -> running [Persist, Audit]",
            "running + restored -> running [Persist, Audit]",
            "running + lost -> running [Audit, Publish]",
            "running + found -> running [Audit, Publish]",
            "running + health_changed -> running [Persist, Publish]",
            "running + idle -> running [Audit, Publish]",
            "running + port_exposed -> running [Persist, Audit]",
            "running + egress_changed -> running [Persist, Audit]",
            "running + timeout_changed -> running [Persist, Audit]",
            "running + agent_crash_loop -> running [RecordError, Persist, Publish]",
            "draining + drain -> draining [ClearError, Persist, Publish]",
            "draining + drain_failed -> draining [RecordError, Persist, Publish]",
            "draining + destroy -> destroying [Persist, Publish]",
            "draining + vanished_on_host -> failed [RecordError, Persist, Release, Publish]",
            "draining + runtime_exceeded -> failed [RecordError, Persist, Publish]",
            "draining + restored -> draining [Persist, Audit]",
            "draining + lost -> draining [Audit, Publish]",
            "draining + found -> draining [Audit, Publish]",
            "draining + health_changed -> draining [Persist, Publish]",
            "draining + idle -> draining [Audit, Publish]",
            "draining + port_exposed -> draining [Persist, Audit]",
            "draining + egress_changed -> draining [Persist, Audit]",
            "draining + timeout_changed -> draining [Persist, Audit]",
            "draining + agent_crash_loop -> draining [RecordError, Persist, Publish]",
            "running + pause -> paused [ClearError, Persist, Resize, Publish]",
            "running + pause_failed -> running [RecordError, Persist, Publish]",
            "provisioning + warmed -> paused [ClearError, Persist, Publish]",
            "paused + resume -> running [ClearError, Persist, Resize, Publish]",
            "paused + resume_failed -> paused [RecordError, Persist, Publish]",
            "paused + migrate_started -> paused [Persist, Audit]",
            "paused + timeout_changed -> paused [Persist, Audit]",
            "paused + migrated -> running [ClearError, Persist, Resize, Publish]",
            "paused + migrate_failed -> paused [RecordError, Persist, Publish]",
            "paused + drawn -> destroyed [Persist, Release, ForgetSecrets, Publish]",
            "paused + destroy -> destroying [Persist, Publish]",
            "paused + vanished_on_host -> failed [RecordError, Persist, Release, Publish]",
            "paused + lost -> paused [Audit, Publish]",
            "paused + found -> paused [Audit, Publish]",
            "failed + destroy -> destroying [Persist, Publish]",
            "failed + host_confirmed_gone -> failed [Release]",
            "destroying + destroy -> destroying []",
            "destroying + destroy_deferred -> destroying [RecordError, Persist, Publish]",
            "destroying + destroy_confirmed -> destroyed [Persist, Release, ForgetSecrets, Publish]",
            "destroyed + destroy -> destroyed []",
        ];
        assert_eq!(text, want);
    }

    #[test]
    fn every_state_and_event_pair_is_a_row_or_refused() {
        let froms: Vec<Option<VmState>> = std::iter::once(None)
            .chain(VmState::ALL.into_iter().map(Some))
            .collect();
        for from in &froms {
            for event in Event::ALL {
                let n = TABLE
                    .iter()
                    .filter(|r| r.from == *from && r.event == event)
                    .count();
                assert!(n <= 1, "{from:?} + {event} has {n} rows");
                match step(*from, event) {
                    Ok(r) => assert_eq!((r.from, r.event), (*from, event)),
                    Err(e) => {
                        assert_eq!(n, 0);
                        assert_eq!(e, IllegalEvent { from: *from, event });
                    }
                }
            }
        }
        let e = step(Some(Destroyed), Event::Drain).unwrap_err();
        assert_eq!(e.to_string(), "drain is not allowed while destroyed");
        let e = step(None, Event::Drain).unwrap_err();
        assert_eq!(e.to_string(), "drain is not allowed without an environment");
    }

    #[test]
    fn invariants_of_the_machine() {
        for r in TABLE {
            // Only a change of state or an explicit write touches the record.
            if r.changes_state() {
                assert!(r.persists(), "{r:?} changes state without persisting");
            }
            // An error is recorded only by a write.
            if r.does(RecordError) || r.does(ClearError) {
                assert!(r.persists(), "{r:?}");
            }
            // Capacity comes back exactly in the rows that end a VM's use of its host.
            let releases = r.does(Release) || r.does(ReleaseIfGone);
            if releases {
                assert!(matches!(r.to, Failed | Destroyed), "{r:?}");
            }
            // A reservation changes size only where the VMM stops or starts again.
            if r.does(Resize) {
                assert!(
                    matches!(r.event, Event::Pause | Event::Resume | Event::Migrated),
                    "{r:?}"
                );
                assert!(r.persists() && !releases, "{r:?}");
            }
            assert_eq!(r.does(Reserve), r.event == Event::Create, "{r:?}");
            // Every state change is published (a VM's watchers see each one).
            if r.changes_state() {
                assert!(r.does(Publish), "{r:?}");
            }
        }
        // destroyed is a sink, and every live state can be deleted.
        for r in TABLE.iter().filter(|r| r.from == Some(Destroyed)) {
            assert_eq!(r.to, Destroyed);
        }
        for s in [Provisioning, Running, Draining, Paused, Failed, Destroying] {
            assert!(step(Some(s), Event::Destroy).is_ok(), "{s}");
        }
        // Every state is reachable from a create.
        let mut seen = vec![Provisioning];
        loop {
            let before = seen.len();
            for r in TABLE {
                if r.from.is_some_and(|f| seen.contains(&f)) && !seen.contains(&r.to) {
                    seen.push(r.to);
                }
            }
            if seen.len() == before {
                break;
            }
        }
        for s in VmState::ALL {
            assert!(seen.contains(&s), "{s} is unreachable");
        }
    }

    #[test]
    fn state_changes_are_the_stores_rule() {
        let mut allowed: Vec<(VmState, VmState)> = Vec::new();
        for from in VmState::ALL {
            for to in VmState::ALL {
                if state_change_allowed(from, to) {
                    allowed.push((from, to));
                }
            }
        }
        assert_eq!(
            allowed,
            [
                (Provisioning, Running),
                (Provisioning, Paused),
                (Provisioning, Destroying),
                (Provisioning, Failed),
                (Running, Draining),
                (Running, Paused),
                (Running, Destroying),
                (Running, Failed),
                (Draining, Destroying),
                (Draining, Failed),
                (Paused, Running),
                (Paused, Destroying),
                (Paused, Destroyed),
                (Paused, Failed),
                (Destroying, Destroyed),
                (Failed, Destroying),
            ]
        );
    }
}
