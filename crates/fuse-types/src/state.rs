//! Lifecycle states (DESIGN §3). Which transitions are legal is the lifecycle table's
//! (`lifecycle.rs`); the states only name themselves.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The state of an environment (VM). `destroyed` and `failed` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Placed and being built on its host.
    Provisioning,
    /// Agent started; serving.
    Running,
    /// Drain command sent; no new work expected.
    Draining,
    /// Its VMM is stopped and its memory and disk are kept on its host (`?action=pause`);
    /// it holds storage there, not CPU or memory, until `?action=resume`. Warm-pool members
    /// wait in this state too (holding their memory).
    Paused,
    /// Being torn down on its host.
    Destroying,
    /// Gone from its host, capacity released (terminal).
    Destroyed,
    /// Something went wrong; see `error` (terminal, but may still be destroyed).
    Failed,
}

/// An illegal state transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The current state.
    pub from: VmState,
    /// The refused target state.
    pub to: VmState,
}

impl VmState {
    /// Every state, for exhaustive tests and metrics.
    pub const ALL: [VmState; 7] = [
        VmState::Provisioning,
        VmState::Running,
        VmState::Draining,
        VmState::Paused,
        VmState::Destroying,
        VmState::Destroyed,
        VmState::Failed,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Provisioning => "provisioning",
            VmState::Running => "running",
            VmState::Draining => "draining",
            VmState::Paused => "paused",
            VmState::Destroying => "destroying",
            VmState::Destroyed => "destroyed",
            VmState::Failed => "failed",
        }
    }

    /// Whether the guest runs and serves (`running` or `draining`).
    pub fn is_serving(self) -> bool {
        matches!(self, VmState::Running | VmState::Draining)
    }

    /// No further lifecycle work happens in a terminal state (a failed VM can still be deleted).
    pub fn is_terminal(self) -> bool {
        matches!(self, VmState::Destroyed | VmState::Failed)
    }

    /// Whether the VM may hold resources on a host in this state.
    pub fn holds_capacity(self) -> bool {
        !matches!(self, VmState::Destroyed)
    }

    /// Whether a write may change the state from `self` to `to`: some event of the
    /// lifecycle table ([`crate::lifecycle::TABLE`]) leads there.
    pub fn can_transition_to(self, to: VmState) -> bool {
        crate::lifecycle::state_change_allowed(self, to)
    }

    /// Checks a transition, returning a typed error for an illegal one.
    pub fn check_transition(self, to: VmState) -> Result<(), TransitionError> {
        if self.can_transition_to(to) {
            Ok(())
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?}; expected one of provisioning, running, draining, paused, destroying, destroyed, failed"
                )
            })
    }
}

/// The state of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Schedulable.
    Active,
    /// Not schedulable by operator (or quarantine) decision; existing VMs keep running.
    Cordoned,
    /// Being emptied; not schedulable.
    Draining,
    /// Not answering; not schedulable.
    Unreachable,
}

impl HostState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Active => "active",
            HostState::Cordoned => "cordoned",
            HostState::Draining => "draining",
            HostState::Unreachable => "unreachable",
        }
    }
}

impl FromStr for HostState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(HostState::Active),
            "cordoned" => Ok(HostState::Cordoned),
            "draining" => Ok(HostState::Draining),
            "unreachable" => Ok(HostState::Unreachable),
            _ => Err(format!("unknown host state {s:?}")),
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Being taken on the host.
    Creating,
    /// Usable.
    Ready,
    /// Being restored into its VM.
    Restoring,
    /// Being deleted on the host.
    Deleting,
    /// Taking or restoring failed; see `last_error`.
    Error,
}

impl SnapshotState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "creating",
            SnapshotState::Ready => "ready",
            SnapshotState::Restoring => "restoring",
            SnapshotState::Deleting => "deleting",
            SnapshotState::Error => "error",
        }
    }
}

impl FromStr for SnapshotState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "creating" => Ok(SnapshotState::Creating),
            "ready" => Ok(SnapshotState::Ready),
            "restoring" => Ok(SnapshotState::Restoring),
            "deleting" => Ok(SnapshotState::Deleting),
            "error" => Ok(SnapshotState::Error),
            _ => Err(format!(
                "unknown snapshot state {s:?}; expected one of creating, ready, restoring, deleting, error"
            )),
        }
    }
}

impl fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::VmState;

    #[test]
    fn parse_round_trips() {
        for s in VmState::ALL {
            assert_eq!(s.as_str().parse::<VmState>().unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!("lost".parse::<VmState>().is_err());
    }
}
