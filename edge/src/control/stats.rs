//! Traffic per flavor, as the analysis and the operator page see it: each replica counts
//! every user call (lock-free, on the serving path) and drains the counts every quarter
//! second into one-second buckets, kept for 15 minutes. Counts from other replicas are
//! added into the same buckets, so a window summed from them judges all replicas' traffic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem::domain::Flavor;
use tonic::Code;

/// Latency buckets: bucket `i` holds calls up to `FIRST_BOUND_US × RATIO^i` µs; the last
/// one holds everything slower. 64 buckets of ×1.25 reach from 50 µs to about 60 s.
pub const BUCKETS: usize = 64;
const FIRST_BOUND_US: f64 = 50.0;
const RATIO: f64 = 1.25;

/// How long the buckets are kept: the operator page shows 15 minutes.
pub const KEPT_SECONDS: usize = 15 * 60;

/// Upper bound of latency bucket `i`, in ms.
fn bucket_upper_ms(i: usize) -> f64 {
    FIRST_BOUND_US * RATIO.powi(i as i32) / 1000.0
}

fn bucket_of(elapsed: Duration) -> usize {
    let micros = elapsed.as_secs_f64() * 1e6;
    if micros <= FIRST_BOUND_US {
        return 0;
    }
    let i = ((micros / FIRST_BOUND_US).ln() / RATIO.ln()).ceil() as usize;
    i.min(BUCKETS - 1)
}

/// Whether a call's outcome counts against the flavor: the server failed, or did not
/// answer in time. What a client got wrong (INVALID_ARGUMENT, NOT_FOUND, …) does not.
pub fn is_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
            | Code::DeadlineExceeded
    )
}

/// One flavor's calls over some span of time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorCounts {
    pub requests: u64,
    /// Calls that ended in a fault ([`is_fault`]).
    pub errors: u64,
    /// Calls by latency bucket.
    pub latency: Vec<u64>,
}

impl Default for FlavorCounts {
    fn default() -> Self {
        FlavorCounts {
            requests: 0,
            errors: 0,
            latency: vec![0; BUCKETS],
        }
    }
}

impl FlavorCounts {
    pub fn add(&mut self, other: &FlavorCounts) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// Calls that surely took longer than `ms` (their whole bucket lies above it).
    pub fn slower_than_ms(&self, ms: f64) -> u64 {
        self.latency
            .iter()
            .enumerate()
            .filter(|(i, _)| *i > 0 && bucket_upper_ms(i - 1) >= ms)
            .map(|(_, n)| n)
            .sum()
    }

    /// The `q` quantile of latency in ms (linear within its bucket, as Prometheus'
    /// `histogram_quantile` does), or `None` without calls.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.latency.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { bucket_upper_ms(i - 1) };
                let upper = bucket_upper_ms(i);
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        Some(bucket_upper_ms(BUCKETS - 1))
    }
}

/// A mismatch seen by a shadow comparison, as the operator is shown it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MismatchExample {
    pub request_id: String,
    pub user_id: String,
    pub field: String,
    /// The flavor that answered the client.
    pub served: String,
    pub served_value: serde_json::Value,
    pub other_value: serde_json::Value,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// What shadow comparisons found over some span of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowCounts {
    pub compared: u64,
    pub matched: u64,
    pub mismatched: u64,
    pub noise: u64,
    /// Shadow calls that failed, so nothing could be compared.
    pub failed: u64,
    /// Reads not shadowed because the queue was full.
    pub dropped: u64,
    /// Mismatches by field path.
    pub fields: BTreeMap<String, u64>,
    /// The latest mismatches (a few per second at most).
    pub examples: Vec<MismatchExample>,
}

/// Most examples one span carries.
pub const EXAMPLES_PER_SPAN: usize = 10;

impl ShadowCounts {
    pub fn add(&mut self, other: &ShadowCounts) {
        self.compared += other.compared;
        self.matched += other.matched;
        self.mismatched += other.mismatched;
        self.noise += other.noise;
        self.failed += other.failed;
        self.dropped += other.dropped;
        for (field, n) in &other.fields {
            *self.fields.entry(field.clone()).or_default() += n;
        }
        self.examples.extend(other.examples.iter().cloned());
        let excess = self.examples.len().saturating_sub(EXAMPLES_PER_SPAN);
        self.examples.drain(..excess);
    }

    pub fn mismatch_rate(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.mismatched as f64 / self.compared as f64)
    }
}

/// Everything counted over one span of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub v1: FlavorCounts,
    pub v2: FlavorCounts,
    pub shadow: ShadowCounts,
}

impl Counts {
    pub fn flavor(&self, flavor: Flavor) -> &FlavorCounts {
        match flavor {
            Flavor::V1 => &self.v1,
            Flavor::V2 => &self.v2,
        }
    }

    pub fn add(&mut self, other: &Counts) {
        self.v1.add(&other.v1);
        self.v2.add(&other.v2);
        self.shadow.add(&other.shadow);
    }

    pub fn is_empty(&self) -> bool {
        self.v1.requests == 0 && self.v2.requests == 0 && self.shadow == ShadowCounts::default()
    }
}

/// One flavor's live counters, bumped by every call.
struct FlavorRecorder {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl FlavorRecorder {
    fn new() -> Self {
        FlavorRecorder {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn take(&self) -> FlavorCounts {
        FlavorCounts {
            requests: self.requests.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.swap(0, Ordering::Relaxed))
                .collect(),
        }
    }
}

/// This replica's counts since they were last taken: atomics for the calls (the serving
/// path never waits on a lock), a mutex for the rarer shadow results.
pub struct Recorder {
    flavors: [FlavorRecorder; 2],
    shadow: std::sync::Mutex<ShadowCounts>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            flavors: [FlavorRecorder::new(), FlavorRecorder::new()],
            shadow: Default::default(),
        }
    }
}

impl Recorder {
    /// Counts one call to a flavor that served a client.
    pub fn call(&self, flavor: Flavor, code: Code, elapsed: Duration) {
        let f = &self.flavors[crate::metrics::slot(flavor)];
        f.requests.fetch_add(1, Ordering::Relaxed);
        if is_fault(code) {
            f.errors.fetch_add(1, Ordering::Relaxed);
        }
        f.latency[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// A call meant for `flavor` that the edge did not make, the flavor being ejected: a
    /// fault of the flavor with no latency to record.
    pub fn ejected_call(&self, flavor: Flavor) {
        let f = &self.flavors[crate::metrics::slot(flavor)];
        f.requests.fetch_add(1, Ordering::Relaxed);
        f.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds shadow results.
    pub fn shadow(&self, counts: ShadowCounts) {
        let mut shadow = self.shadow.lock().unwrap_or_else(|p| p.into_inner());
        shadow.add(&counts);
    }

    /// The counts since the last take, leaving zero.
    pub fn take(&self) -> Counts {
        let shadow = std::mem::take(&mut *self.shadow.lock().unwrap_or_else(|p| p.into_inner()));
        Counts {
            v1: self.flavors[0].take(),
            v2: self.flavors[1].take(),
            shadow,
        }
    }
}

/// One second of traffic, all replicas together, and the dial at that second.
#[derive(Debug, Clone, Default)]
struct Second {
    at: i64,
    p: Option<u8>,
    counts: Counts,
}

/// The last [`KEPT_SECONDS`] of traffic, one bucket a second (unix time).
pub struct Series {
    seconds: VecDeque<Second>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            seconds: VecDeque::with_capacity(KEPT_SECONDS + 1),
        }
    }
}

impl Series {
    fn bucket(&mut self, at: i64) -> Option<&mut Second> {
        let newest = self.seconds.back().map(|s| s.at);
        match newest {
            None => self.seconds.push_back(Second {
                at,
                ..Second::default()
            }),
            Some(newest) if at > newest => {
                // Seconds with no traffic get empty buckets, so buckets stay one a second.
                let from = (newest + 1).max(at - KEPT_SECONDS as i64 + 1);
                for second in from..=at {
                    self.seconds.push_back(Second {
                        at: second,
                        ..Second::default()
                    });
                }
                while self.seconds.len() > KEPT_SECONDS {
                    self.seconds.pop_front();
                }
            }
            Some(_) => {}
        }
        let oldest = self.seconds.front()?.at;
        if at < oldest {
            return None; // older than what is kept
        }
        self.seconds.get_mut((at - oldest) as usize)
    }

    /// Adds counts (from this replica or another) to the second `at`.
    pub fn add(&mut self, at: i64, counts: &Counts) {
        if let Some(second) = self.bucket(at) {
            second.counts.add(counts);
        }
    }

    /// Records the dial at second `at`.
    pub fn mark_p(&mut self, at: i64, p: u8) {
        if let Some(second) = self.bucket(at) {
            second.p = Some(p);
        }
    }

    /// All counts of the seconds in `[from, to)`.
    pub fn window(&self, from: i64, to: i64) -> Counts {
        let mut total = Counts::default();
        for second in self.seconds.iter().filter(|s| s.at >= from && s.at < to) {
            total.add(&second.counts);
        }
        total
    }

    /// The kept seconds as points of `step` seconds each, oldest first: `(start, counts,
    /// last P seen in the step)`.
    pub fn points(&self, step: usize) -> Vec<(i64, Counts, Option<u8>)> {
        let step = step.max(1) as i64;
        let mut points: Vec<(i64, Counts, Option<u8>)> = Vec::new();
        for second in &self.seconds {
            let start = second.at - second.at.rem_euclid(step);
            match points.last_mut() {
                Some((at, counts, p)) if *at == start => {
                    counts.add(&second.counts);
                    if second.p.is_some() {
                        *p = second.p;
                    }
                }
                _ => points.push((start, second.counts.clone(), second.p)),
            }
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets_within_a_quarter() {
        let recorder = Recorder::default();
        for ms in 1..=100 {
            recorder.call(Flavor::V2, Code::Ok, Duration::from_millis(ms));
        }
        let counts = recorder.take();
        assert_eq!(counts.v2.requests, 100);
        let p50 = counts.v2.quantile_ms(0.5).unwrap();
        let p99 = counts.v2.quantile_ms(0.99).unwrap();
        assert!((40.0..=62.5).contains(&p50), "p50 {p50}");
        assert!((79.0..=125.0).contains(&p99), "p99 {p99}");
        assert_eq!(recorder.take().v2.requests, 0, "taking leaves zero");
        assert_eq!(FlavorCounts::default().quantile_ms(0.99), None);
    }

    #[test]
    fn only_server_faults_are_errors() {
        let recorder = Recorder::default();
        for code in [
            Code::Ok,
            Code::NotFound,
            Code::InvalidArgument,
            Code::AlreadyExists,
        ] {
            recorder.call(Flavor::V1, code, Duration::from_millis(1));
        }
        for code in [Code::Unavailable, Code::Internal, Code::DeadlineExceeded] {
            recorder.call(Flavor::V1, code, Duration::from_millis(1));
        }
        let counts = recorder.take();
        assert_eq!((counts.v1.requests, counts.v1.errors), (7, 3));
    }

    #[test]
    fn windows_sum_the_seconds_they_cover_from_every_replica() {
        let mut series = Series::default();
        let one = |n: u64| Counts {
            v2: FlavorCounts {
                requests: n,
                ..FlavorCounts::default()
            },
            ..Counts::default()
        };
        series.add(1000, &one(1));
        series.add(1001, &one(2));
        series.add(1001, &one(3)); // another replica, the same second
        series.add(1003, &one(4));
        assert_eq!(series.window(1001, 1003).v2.requests, 5);
        assert_eq!(series.window(1000, 1004).v2.requests, 10);
        // 15 minutes later the old seconds are gone, and memory does not grow.
        series.add(1003 + KEPT_SECONDS as i64, &one(1));
        assert_eq!(series.seconds.len(), KEPT_SECONDS);
        assert_eq!(series.window(0, 1100).v2.requests, 0);
        series.add(10, &one(1)); // too old: ignored
        assert_eq!(
            series
                .points(60)
                .iter()
                .map(|p| p.1.v2.requests)
                .sum::<u64>(),
            1
        );
    }
}
