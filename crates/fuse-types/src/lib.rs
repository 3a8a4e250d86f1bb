//! Wire types shared by every Fuse component: the control-plane REST API (DESIGN §2), the
//! lifecycle states (§3) and the SSE event payload (§5).
//!
//! These types are the compatibility contract with clients written for the original Go Fuse:
//! field names are snake_case and must not be renamed. Input, output and storage types are
//! deliberately separate; storage rows live in `fuse-store`.

pub mod egress;
mod error;
pub mod health;
pub mod hostagent;
mod ids;
pub mod lifecycle;
mod state;
mod wire;

pub use egress::{EgressEntry, EgressMode, EgressRules};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ids::{HostId, IdError, SnapshotId, TaskId, VmId};
pub use state::{HostState, SnapshotState, TransitionError, VmState};
pub use wire::*;

/// Timestamps on the wire are RFC 3339 in UTC.
pub type Timestamp = time::OffsetDateTime;

/// The current time, truncated to microseconds so it survives a round trip through Postgres.
pub fn now() -> Timestamp {
    let t = time::OffsetDateTime::now_utc();
    let micros = t.microsecond();
    t.replace_microsecond(micros).unwrap_or(t)
}
