//! Ejecting a failing upstream (outlier detection, as Envoy calls it): after a run of
//! consecutive faults the edge stops calling it for a while, so clients are not made to
//! wait out its timeouts. The time doubles with each ejection in a row, up to a cap;
//! then one probe call is let through (half-open) and its outcome decides.
//!
//! For the user flavors the other flavor serves meanwhile, and both are never ejected at
//! once: a flavor whose partner is out stays in, whatever it does. For order-svc, an
//! ejection answers 503 at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic::Code;

use tandem::domain::Flavor;

use crate::control::stats::is_fault;

/// When to eject and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionSettings {
    /// Consecutive faults (transport failures, 5xx-class statuses) that eject.
    pub after: u32,
    /// The first ejection's length; each one in a row doubles it.
    pub base: Duration,
    pub max: Duration,
}

impl Default for EjectionSettings {
    fn default() -> Self {
        EjectionSettings {
            after: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

/// A probe not back by then is taken as lost (calls have a deadline of a few seconds).
const PROBE_LOST_AFTER: Duration = Duration::from_secs(30);

/// What an outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Ejected for this long.
    Ejected(Duration),
    /// Back in service after a good probe.
    Restored,
}

/// What a breaker says about the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Call it.
    Yes,
    /// Call it: this call is the probe of a half-open breaker.
    Probe,
    /// Ejected: do not call it.
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// The probe is out (`Some`, since when), or may go (`None`).
    HalfOpen {
        probe: Option<Instant>,
    },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    consecutive: u32,
    /// Ejections in a row (reset when the breaker has stayed closed for `max`).
    streak: u32,
    closed_since: Instant,
    ejections: u64,
}

#[derive(Debug)]
pub struct Breaker {
    settings: EjectionSettings,
    inner: Mutex<Inner>,
}

/// A breaker as `GET /admin/routing` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    /// closed (calls go through), open (ejected) or halfOpen (a probe decides).
    #[schema(example = "closed")]
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// Ejections since the edge started.
    pub ejections: u64,
    /// Seconds until an open breaker lets a probe through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reopens_in_seconds: Option<f64>,
}

impl Breaker {
    pub fn new(settings: EjectionSettings) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                consecutive: 0,
                streak: 0,
                closed_since: Instant::now(),
                ejections: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the next call may go, moving an expired ejection to half-open.
    pub fn admit(&self) -> Admit {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => Admit::Yes,
            Phase::Open { until } if now < until => Admit::No,
            Phase::Open { .. } | Phase::HalfOpen { probe: None } => {
                inner.phase = Phase::HalfOpen { probe: Some(now) };
                Admit::Probe
            }
            // A probe that never reported (its caller went away) is replaced rather than
            // holding the breaker half-open forever.
            Phase::HalfOpen { probe: Some(at) } if now - at > PROBE_LOST_AFTER => {
                inner.phase = Phase::HalfOpen { probe: Some(now) };
                Admit::Probe
            }
            Phase::HalfOpen { .. } => Admit::No,
        }
    }

    /// Whether calls would be refused now (without claiming a probe).
    pub fn is_ejected(&self) -> bool {
        let inner = self.lock();
        match inner.phase {
            Phase::Closed => false,
            Phase::Open { until } => Instant::now() < until,
            Phase::HalfOpen { probe } => probe.is_some(),
        }
    }

    /// Records a call's outcome. `may_eject` is false when ejecting this one would leave
    /// nothing to serve (the other flavor is out).
    pub fn record(&self, code: Code, probe: bool, may_eject: bool) -> Change {
        let now = Instant::now();
        let mut inner = self.lock();
        if !is_fault(code) {
            let mut change = Change::None;
            if probe || matches!(inner.phase, Phase::HalfOpen { .. }) {
                inner.phase = Phase::Closed;
                inner.closed_since = now;
                change = Change::Restored;
            }
            inner.consecutive = 0;
            if matches!(inner.phase, Phase::Closed)
                && now.duration_since(inner.closed_since) >= self.settings.max
            {
                inner.streak = 0;
            }
            return change;
        }
        inner.consecutive = inner.consecutive.saturating_add(1);
        let failed_probe = probe || matches!(inner.phase, Phase::HalfOpen { probe: Some(_) });
        let run_out =
            matches!(inner.phase, Phase::Closed) && inner.consecutive >= self.settings.after;
        if !(failed_probe || run_out) || !may_eject {
            if failed_probe {
                // Not ejected (its partner is out): it serves again.
                inner.phase = Phase::Closed;
                inner.closed_since = now;
                return Change::Restored;
            }
            return Change::None;
        }
        if matches!(inner.phase, Phase::Closed)
            && now.duration_since(inner.closed_since) >= self.settings.max
        {
            inner.streak = 0;
        }
        let length = self
            .settings
            .base
            .saturating_mul(1 << inner.streak.min(16))
            .min(self.settings.max);
        inner.streak = inner.streak.saturating_add(1);
        inner.ejections += 1;
        inner.phase = Phase::Open {
            until: now + length,
        };
        Change::Ejected(length)
    }

    pub fn view(&self) -> BreakerView {
        let now = Instant::now();
        let inner = self.lock();
        let (state, reopens) = match inner.phase {
            Phase::Closed => ("closed", None),
            Phase::Open { until } if now < until => ("open", Some((until - now).as_secs_f64())),
            Phase::Open { .. } | Phase::HalfOpen { .. } => ("halfOpen", None),
        };
        BreakerView {
            state,
            consecutive_failures: inner.consecutive,
            ejections: inner.ejections,
            reopens_in_seconds: reopens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> EjectionSettings {
        EjectionSettings {
            after: 3,
            base: Duration::from_millis(0),
            max: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_run_of_faults_ejects_and_a_good_probe_closes() {
        let b = Breaker::new(EjectionSettings {
            base: Duration::from_secs(60),
            ..quick()
        });
        for _ in 0..2 {
            assert_eq!(b.record(Code::Unavailable, false, true), Change::None);
        }
        // A client's own error breaks the run.
        b.record(Code::NotFound, false, true);
        for _ in 0..2 {
            assert_eq!(b.record(Code::Internal, false, true), Change::None);
        }
        assert!(matches!(
            b.record(Code::DeadlineExceeded, false, true),
            Change::Ejected(_)
        ));
        assert_eq!(b.admit(), Admit::No);
        assert_eq!(b.view().state, "open");
        assert_eq!(b.view().ejections, 1);
    }

    #[test]
    fn an_ejection_ends_in_one_probe_and_doubles_when_the_probe_fails() {
        let b = Breaker::new(quick());
        for _ in 0..3 {
            b.record(Code::Unavailable, false, true);
        }
        // Base time 0: the next call is the probe, the one after waits for it.
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No);
        assert!(
            matches!(b.record(Code::Unavailable, true, true), Change::Ejected(_)),
            "a failed probe ejects again"
        );
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.record(Code::Ok, true, true), Change::Restored);
        assert_eq!(b.admit(), Admit::Yes);
        assert_eq!(b.view().state, "closed");
        assert_eq!(b.view().ejections, 2);
    }

    #[test]
    fn the_time_doubles_up_to_the_cap() {
        let b = Breaker::new(EjectionSettings {
            after: 1,
            base: Duration::from_secs(30),
            max: Duration::from_secs(100),
        });
        let mut lengths = Vec::new();
        for _ in 0..4 {
            b.record(Code::Unavailable, true, true);
            lengths.push(b.view().reopens_in_seconds.unwrap().round() as u64);
        }
        assert_eq!(lengths, [30, 60, 100, 100]);
    }

    #[test]
    fn a_flavor_whose_partner_is_out_is_never_ejected() {
        let b = Breaker::new(quick());
        for _ in 0..10 {
            assert_eq!(b.record(Code::Unavailable, false, false), Change::None);
        }
        assert_eq!(b.admit(), Admit::Yes);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct UpstreamLabel {
    upstream: &'static str,
}

/// The breakers of the three upstreams, with their metrics.
pub struct Breakers {
    flavors: [Breaker; 2],
    orders: Breaker,
    ejected: prometheus_client::metrics::family::Family<
        UpstreamLabel,
        prometheus_client::metrics::gauge::Gauge,
    >,
    ejections: prometheus_client::metrics::family::Family<
        UpstreamLabel,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// Every breaker, for `GET /admin/routing`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EjectionView {
    pub v1: BreakerView,
    pub v2: BreakerView,
    pub orders: BreakerView,
}

const ORDERS: &str = "order-svc";

impl Breakers {
    pub fn new(
        settings: EjectionSettings,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Breakers {
        let breakers = Breakers {
            flavors: [Breaker::new(settings), Breaker::new(settings)],
            orders: Breaker::new(settings),
            ejected: Default::default(),
            ejections: Default::default(),
        };
        registry.register(
            "upstream_ejected",
            "1 while the upstream is ejected after repeated failures",
            breakers.ejected.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Times the upstream was ejected",
            breakers.ejections.clone(),
        );
        for name in [Flavor::V1.service_name(), Flavor::V2.service_name(), ORDERS] {
            breakers
                .ejected
                .get_or_create(&UpstreamLabel { upstream: name })
                .set(0);
        }
        breakers
    }

    fn flavor(&self, flavor: Flavor) -> &Breaker {
        &self.flavors[crate::metrics::slot(flavor)]
    }

    /// The flavor that takes a call meant for `wanted`, and whether it is a probe: the
    /// other one while `wanted` is ejected (unless that one is out too).
    pub fn pick(&self, wanted: Flavor) -> (Flavor, bool) {
        match self.flavor(wanted).admit() {
            Admit::Yes => (wanted, false),
            Admit::Probe => (wanted, true),
            Admit::No => match self.flavor(wanted.other()).admit() {
                Admit::Yes => (wanted.other(), false),
                Admit::Probe => (wanted.other(), true),
                Admit::No => (wanted, false),
            },
        }
    }

    pub fn is_ejected(&self, flavor: Flavor) -> bool {
        self.flavor(flavor).is_ejected()
    }

    pub fn record_flavor(&self, flavor: Flavor, code: Code, probe: bool) {
        let may_eject = !self.flavor(flavor.other()).is_ejected();
        let change = self.flavor(flavor).record(code, probe, may_eject);
        self.note(flavor.service_name(), change);
    }

    /// Whether order-svc may be called now (and whether as the probe); when it may not,
    /// the seconds until it may.
    pub fn admit_orders(&self) -> Result<bool, f64> {
        match self.orders.admit() {
            Admit::Yes => Ok(false),
            Admit::Probe => Ok(true),
            Admit::No => Err(self.orders.view().reopens_in_seconds.unwrap_or(1.0)),
        }
    }

    pub fn record_orders(&self, code: Code, probe: bool) {
        let change = self.orders.record(code, probe, true);
        self.note(ORDERS, change);
    }

    fn note(&self, upstream: &'static str, change: Change) {
        let label = UpstreamLabel { upstream };
        match change {
            Change::None => {}
            Change::Ejected(length) => {
                self.ejected.get_or_create(&label).set(1);
                self.ejections.get_or_create(&label).inc();
                tracing::warn!(
                    upstream,
                    seconds = length.as_secs(),
                    "upstream ejected after repeated failures"
                );
            }
            Change::Restored => {
                self.ejected.get_or_create(&label).set(0);
                tracing::info!(upstream, "upstream back in service after a good probe");
            }
        }
    }

    pub fn view(&self) -> EjectionView {
        EjectionView {
            v1: self.flavor(Flavor::V1).view(),
            v2: self.flavor(Flavor::V2).view(),
            orders: self.orders.view(),
        }
    }
}
