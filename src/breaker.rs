//! Per-provider circuit breaker as a pure state machine: the caller passes the clock in, so every
//! transition is unit-tested without sleeping.
//!
//! closed --(failure_threshold consecutive retryable failures)--> open
//! open --(recovery_timeout elapsed; exactly one request admitted as the probe)--> half_open
//! half_open --(probe succeeds)--> closed; --(probe fails)--> open (timer restarts)
//! While the probe is in flight every other request is refused.

use crate::config::BreakerConfig;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// The answer to "may a request go to this provider now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Yes,
    /// The single half-open probe: report its outcome with `probe = true`.
    Probe,
    /// Refused; the circuit may admit a probe at `retry_at`.
    No { retry_at: Instant },
}

impl Admit {
    pub fn is_probe(self) -> bool {
        matches!(self, Admit::Probe)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

/// A state change, returned so callers can log it and count it in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub state: State,
    pub failures: u32,
    /// When an open circuit will admit its probe.
    pub retry_at: Option<Instant>,
}

/// How long a refused caller should wait when a probe is already in flight.
const PROBE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Inner,
    failures: u32,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            inner: Inner::Closed,
            failures: 0,
        }
    }

    pub fn config(&self) -> BreakerConfig {
        self.cfg
    }

    /// Replaces the thresholds (on config reload) while keeping the state.
    pub fn set_config(&mut self, cfg: BreakerConfig) {
        self.cfg = cfg;
    }

    fn state_of(inner: Inner) -> State {
        match inner {
            Inner::Closed => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: Self::state_of(self.inner),
            failures: self.failures,
            retry_at: match self.inner {
                Inner::Open { until } => Some(until),
                _ => None,
            },
        }
    }

    /// Decides admission at `now`. An open circuit whose timer has run out admits exactly one
    /// probe and moves to half-open.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        if !self.cfg.enabled {
            return (Admit::Yes, None);
        }
        match self.inner {
            Inner::Closed => (Admit::Yes, None),
            Inner::Open { until } if now >= until => {
                self.inner = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                (
                    Admit::Probe,
                    Some(Transition {
                        from: State::Open,
                        to: State::HalfOpen,
                    }),
                )
            }
            Inner::Open { until } => (Admit::No { retry_at: until }, None),
            Inner::HalfOpen {
                probe_in_flight: false,
            } => {
                self.inner = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                (Admit::Probe, None)
            }
            Inner::HalfOpen {
                probe_in_flight: true,
            } => (
                Admit::No {
                    retry_at: now + PROBE_WAIT,
                },
                None,
            ),
        }
    }

    /// The provider answered properly. A probe closes the circuit; any success resets the count.
    pub fn on_success(&mut self, probe: bool) -> Option<Transition> {
        let from = Self::state_of(self.inner);
        match self.inner {
            Inner::HalfOpen { .. } if probe => {
                self.inner = Inner::Closed;
                self.failures = 0;
                Some(Transition {
                    from,
                    to: State::Closed,
                })
            }
            Inner::Closed => {
                self.failures = 0;
                None
            }
            // A late success of a request admitted before the circuit opened does not close it.
            _ => None,
        }
    }

    /// A retryable failure at `now`.
    pub fn on_failure(&mut self, probe: bool, now: Instant) -> Option<Transition> {
        if !self.cfg.enabled {
            return None;
        }
        let from = Self::state_of(self.inner);
        self.failures = self.failures.saturating_add(1);
        match self.inner {
            Inner::HalfOpen { .. } if probe => {
                self.inner = Inner::Open {
                    until: now + self.cfg.recovery_timeout,
                };
                Some(Transition {
                    from,
                    to: State::Open,
                })
            }
            Inner::Closed if self.failures >= self.cfg.failure_threshold => {
                self.inner = Inner::Open {
                    until: now + self.cfg.recovery_timeout,
                };
                Some(Transition {
                    from,
                    to: State::Open,
                })
            }
            _ => None,
        }
    }

    /// A probe ended with no verdict (the client went away, or it was skipped after admission):
    /// free the probe slot so the next request can probe.
    pub fn on_abandon(&mut self, probe: bool) {
        if probe {
            if let Inner::HalfOpen { .. } = self.inner {
                self.inner = Inner::HalfOpen {
                    probe_in_flight: false,
                };
            }
        }
    }

    /// Forces the circuit closed (admin reset or a passing health probe).
    pub fn reset(&mut self) -> Option<Transition> {
        let from = Self::state_of(self.inner);
        self.inner = Inner::Closed;
        self.failures = 0;
        (from != State::Closed).then_some(Transition {
            from,
            to: State::Closed,
        })
    }

    /// Forces the circuit open from `now` (a failing health probe).
    pub fn trip(&mut self, now: Instant) -> Option<Transition> {
        let from = Self::state_of(self.inner);
        self.inner = Inner::Open {
            until: now + self.cfg.recovery_timeout,
        };
        (from != State::Open).then_some(Transition {
            from,
            to: State::Open,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_threshold: 3,
            recovery_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        assert_eq!(b.admit(t0).0, Admit::Yes);
        assert_eq!(b.on_failure(false, t0), None);
        assert_eq!(b.on_failure(false, t0), None);
        let tr = b.on_failure(false, t0).unwrap();
        assert_eq!((tr.from, tr.to), (State::Closed, State::Open));
        assert_eq!(b.snapshot().state, State::Open);
        assert_eq!(b.snapshot().failures, 3);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(29)).0,
            Admit::No {
                retry_at: t0 + Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn success_resets_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        b.on_failure(false, t0);
        b.on_failure(false, t0);
        b.on_success(false);
        assert_eq!(b.snapshot().failures, 0);
        b.on_failure(false, t0);
        b.on_failure(false, t0);
        assert_eq!(b.snapshot().state, State::Closed);
    }

    fn opened(t0: Instant) -> Breaker {
        let mut b = Breaker::new(cfg());
        for _ in 0..3 {
            b.on_failure(false, t0);
        }
        b
    }

    #[test]
    fn exactly_one_probe_after_recovery_timeout() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(30);
        let (a, tr) = b.admit(t1);
        assert_eq!(a, Admit::Probe);
        assert_eq!(tr.unwrap().to, State::HalfOpen);
        // Concurrent requests during the probe are refused.
        for _ in 0..5 {
            assert!(matches!(b.admit(t1).0, Admit::No { .. }));
        }
        assert_eq!(b.snapshot().state, State::HalfOpen);
    }

    #[test]
    fn probe_success_closes() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(b.admit(t1).0, Admit::Probe);
        let tr = b.on_success(true).unwrap();
        assert_eq!((tr.from, tr.to), (State::HalfOpen, State::Closed));
        assert_eq!(b.snapshot().failures, 0);
        assert_eq!(b.admit(t1).0, Admit::Yes);
    }

    #[test]
    fn probe_failure_reopens_and_restarts_timer() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(40);
        assert_eq!(b.admit(t1).0, Admit::Probe);
        let tr = b.on_failure(true, t1).unwrap();
        assert_eq!((tr.from, tr.to), (State::HalfOpen, State::Open));
        assert_eq!(
            b.admit(t1 + Duration::from_secs(29)).0,
            Admit::No {
                retry_at: t1 + Duration::from_secs(30)
            }
        );
        assert_eq!(b.admit(t1 + Duration::from_secs(30)).0, Admit::Probe);
    }

    #[test]
    fn abandoned_probe_frees_the_slot() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.admit(t1).0, Admit::Probe);
        b.on_abandon(true);
        assert_eq!(b.admit(t1).0, Admit::Probe);
        assert!(matches!(b.admit(t1).0, Admit::No { .. }));
    }

    #[test]
    fn late_results_of_non_probes_do_not_close_or_reopen() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        assert_eq!(b.on_success(false), None);
        assert_eq!(b.snapshot().state, State::Open);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.admit(t1).0, Admit::Probe);
        assert_eq!(b.on_failure(false, t1), None);
        assert_eq!(b.snapshot().state, State::HalfOpen);
    }

    #[test]
    fn concurrent_half_open_admission_lets_one_through() {
        use std::sync::{Arc, Mutex};
        let t0 = Instant::now();
        let b = Arc::new(Mutex::new(opened(t0)));
        let t1 = t0 + Duration::from_secs(30);
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.lock().unwrap().admit(t1).0)
            })
            .collect();
        let probes = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|a| a.is_probe())
            .count();
        assert_eq!(probes, 1);
    }

    #[test]
    fn disabled_breaker_always_admits() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            enabled: false,
            ..cfg()
        });
        for _ in 0..10 {
            b.on_failure(false, t0);
        }
        assert_eq!(b.admit(t0).0, Admit::Yes);
    }

    #[test]
    fn reset_and_trip() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        assert_eq!(b.reset().unwrap().to, State::Closed);
        assert_eq!(b.reset(), None);
        assert_eq!(b.trip(t0).unwrap().to, State::Open);
        assert!(matches!(b.admit(t0).0, Admit::No { .. }));
    }
}
