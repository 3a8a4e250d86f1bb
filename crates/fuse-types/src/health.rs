//! The healthcheck verdict as a pure state machine: what one probe outcome does to an
//! environment's `health`. The host runs the probes; this decides what they mean, so the
//! rules are table-tested without a guest or a clock.
//!
//! Rules (as the Go original's guest agent had them): a new check is `starting`; a pass
//! makes it `passing` and clears the failure count; a failure inside the start period
//! (before the first pass) is not counted; otherwise `retries` consecutive failures make it
//! `failing`. A failing probe only reports: nothing moves the environment for it.

use crate::{Health, HealthState, HealthcheckSpec, Timestamp};
use std::time::Duration;

/// Default seconds between attempts.
pub const DEFAULT_INTERVAL_SECS: u64 = 10;
/// Default bound on one attempt.
pub const DEFAULT_TIMEOUT_SECS: u64 = 2;
/// Default consecutive failures before `failing`.
pub const DEFAULT_RETRIES: u32 = 3;

/// A healthcheck's timing with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between attempts.
    pub interval: Duration,
    /// One attempt's bound.
    pub timeout: Duration,
    /// Consecutive failures that make it `failing`.
    pub retries: u32,
    /// Failures before the first pass and within this window of the first attempt are not
    /// counted.
    pub start_period: Duration,
}

impl Timing {
    /// The spec's timing (0 or absent = the default).
    pub fn of(spec: &HealthcheckSpec) -> Timing {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        Timing {
            interval: Duration::from_secs(or(spec.interval_seconds, DEFAULT_INTERVAL_SECS)),
            timeout: Duration::from_secs(or(spec.timeout_seconds, DEFAULT_TIMEOUT_SECS)),
            retries: if spec.retries == 0 {
                DEFAULT_RETRIES
            } else {
                spec.retries
            },
            start_period: Duration::from_secs(spec.start_period_seconds),
        }
    }
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Pass,
    /// It failed, and why.
    Fail(String),
}

/// The running verdict of one environment's healthcheck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    timing: Timing,
    first_attempt: Option<Timestamp>,
    passed_once: bool,
    health: Health,
}

impl Machine {
    /// A new check, `starting` since `now`.
    pub fn new(timing: Timing, now: Timestamp) -> Machine {
        Machine {
            timing,
            first_attempt: None,
            passed_once: false,
            health: Health {
                state: HealthState::Starting,
                since: Some(now),
                failures: 0,
                message: String::new(),
            },
        }
    }

    /// The current verdict.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Applies one probe outcome at `now`; returns whether the state changed.
    pub fn observe(&mut self, outcome: Outcome, now: Timestamp) -> bool {
        let first = *self.first_attempt.get_or_insert(now);
        let before = self.health.state;
        match outcome {
            Outcome::Pass => {
                self.passed_once = true;
                self.health.failures = 0;
                self.health.message.clear();
                self.health.state = HealthState::Passing;
            }
            Outcome::Fail(message) => {
                self.health.message = message;
                let grace = !self.passed_once
                    && (now - first)
                        < time::Duration::try_from(self.timing.start_period)
                            .unwrap_or(time::Duration::MAX);
                if !grace {
                    self.health.failures = self.health.failures.saturating_add(1);
                    if self.health.failures >= self.timing.retries {
                        self.health.state = HealthState::Failing;
                    }
                }
            }
        }
        let changed = self.health.state != before;
        if changed {
            self.health.since = Some(now);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::*;

    fn t(secs: i64) -> Timestamp {
        time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
    }

    fn timing(retries: u32, start_period: u64) -> Timing {
        Timing::of(&HealthcheckSpec {
            retries,
            start_period_seconds: start_period,
            ..HealthcheckSpec::default()
        })
    }

    fn fail() -> Outcome {
        Outcome::Fail("connection refused".into())
    }

    /// (timing, outcomes at seconds) → the states after each outcome, and whether it changed.
    #[test]
    fn the_table() {
        type Row = (Timing, Vec<(i64, Outcome)>, Vec<(HealthState, u32, bool)>);
        let rows: Vec<Row> = vec![
            // A pass at once.
            (
                timing(3, 0),
                vec![(1, Outcome::Pass)],
                vec![(Passing, 0, true)],
            ),
            // Three failures with retries 3: starting, starting, failing.
            (
                timing(3, 0),
                vec![(1, fail()), (2, fail()), (3, fail())],
                vec![
                    (Starting, 1, false),
                    (Starting, 2, false),
                    (Failing, 3, true),
                ],
            ),
            // Retries 1: the first counted failure fails it.
            (timing(1, 0), vec![(1, fail())], vec![(Failing, 1, true)]),
            // Inside the start period failures are not counted; after it they are.
            (
                timing(1, 10),
                vec![(0, fail()), (9, fail()), (10, fail())],
                vec![
                    (Starting, 0, false),
                    (Starting, 0, false),
                    (Failing, 1, true),
                ],
            ),
            // A pass ends the start period for good: the next failure counts.
            (
                timing(1, 100),
                vec![(0, Outcome::Pass), (1, fail())],
                vec![(Passing, 0, true), (Failing, 1, true)],
            ),
            // Passing stays passing below the retry count, and a pass resets the count.
            (
                timing(2, 0),
                vec![
                    (0, Outcome::Pass),
                    (1, fail()),
                    (2, Outcome::Pass),
                    (3, fail()),
                ],
                vec![
                    (Passing, 0, true),
                    (Passing, 1, false),
                    (Passing, 0, false),
                    (Passing, 1, false),
                ],
            ),
            // Failing recovers on one pass.
            (
                timing(1, 0),
                vec![(0, fail()), (1, fail()), (2, Outcome::Pass)],
                vec![(Failing, 1, true), (Failing, 2, false), (Passing, 0, true)],
            ),
        ];
        for (i, (timing, outcomes, want)) in rows.into_iter().enumerate() {
            let mut m = Machine::new(timing, t(0));
            for (j, ((at, o), (state, failures, changed))) in
                outcomes.into_iter().zip(want).enumerate()
            {
                let was_fail = matches!(o, Outcome::Fail(_));
                let c = m.observe(o, t(at));
                let h = m.health();
                assert_eq!(
                    (h.state, h.failures, c),
                    (state, failures, changed),
                    "row {i}, outcome {j}"
                );
                if changed {
                    assert_eq!(h.since, Some(t(at)), "row {i}, outcome {j}: since");
                }
                assert_eq!(
                    h.message.is_empty(),
                    !was_fail,
                    "row {i}, outcome {j}: message kept only from a failure"
                );
            }
        }
    }

    #[test]
    fn defaults_fill_zero_values() {
        let d = Timing::of(&HealthcheckSpec::default());
        assert_eq!(d.interval, Duration::from_secs(10));
        assert_eq!(d.timeout, Duration::from_secs(2));
        assert_eq!(d.retries, 3);
        assert_eq!(d.start_period, Duration::ZERO);
    }
}
