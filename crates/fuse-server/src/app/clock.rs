//! The control plane's "now" for decisions that depend on how much time has passed (a host
//! silent past its limit, an environment past its runtime, an abandoned provision, expired
//! snapshots and records). It is the wall clock, plus an offset that only tests move: a
//! test "waits" for a limit by advancing it instead of sleeping. Timestamps written by the
//! store stay real wall-clock times.

use fuse_types::Timestamp;
use parking_lot::Mutex;
use std::time::Duration;

/// The wall clock, possibly ahead by an offset (zero outside tests).
#[derive(Debug, Default)]
pub struct Clock {
    ahead: Mutex<Duration>,
}

impl Clock {
    /// Now.
    pub fn now(&self) -> Timestamp {
        fuse_types::now() + *self.ahead.lock()
    }

    /// Moves this clock `d` forward (for tests; nothing in the control plane calls it).
    pub fn advance(&self, d: Duration) {
        *self.ahead.lock() += d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_now_forward_and_only_forward() {
        let c = Clock::default();
        let t0 = c.now();
        c.advance(Duration::from_secs(3600));
        let t1 = c.now();
        assert!(t1 - t0 >= time::Duration::hours(1));
        assert!(t1 - t0 < time::Duration::hours(1) + time::Duration::seconds(5));
    }
}
