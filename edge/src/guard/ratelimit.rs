//! A token bucket per client (governor's GCRA, one cell per key): a client is its
//! token's `sub`, or else its address. Answers carry the IETF httpapi draft's
//! `RateLimit-Policy` and `RateLimit` headers; a refusal adds `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// `100/s,burst=200`: the sustained rate and the bucket's size (the rate when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// Requests per `per`.
    pub count: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

impl FromStr for RateLimitSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "the form is <count>/<s|m|h>[,burst=<n>], e.g. 100/s,burst=200";
        let mut parts = s.split(',').map(str::trim);
        let rate = parts.next().unwrap_or_default();
        let (count, unit) = rate.split_once('/').ok_or(FORM)?;
        let count: NonZeroU32 = count
            .trim()
            .parse()
            .map_err(|_| format!("the count must be a whole number ≥ 1; {FORM}"))?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("unknown unit {other:?}; {FORM}")),
        };
        let mut burst = count;
        for part in parts {
            let value = part.strip_prefix("burst=").ok_or(FORM)?;
            burst = value
                .trim()
                .parse()
                .map_err(|_| format!("burst must be a whole number ≥ 1; {FORM}"))?;
        }
        Ok(RateLimitSpec { count, per, burst })
    }
}

impl RateLimitSpec {
    fn quota(&self) -> Quota {
        // One cell every per/count; a period of at least 1 ns (count ≤ u32::MAX).
        let period = (self.per / self.count.get()).max(Duration::from_nanos(1));
        Quota::with_period(period)
            .expect("a non-zero period")
            .allow_burst(self.burst)
    }

    /// The window of the policy header: how long an empty bucket takes to fill.
    fn window_secs(&self) -> u64 {
        let fill =
            self.per.as_secs_f64() * f64::from(self.burst.get()) / f64::from(self.count.get());
        fill.ceil().max(1.0) as u64
    }
}

/// Who a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Subject(Arc<str>),
    Address(IpAddr),
}

type Limiter = RateLimiter<
    ClientKey,
    DefaultKeyedStateStore<ClientKey>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// The decision on one request, with what its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `RateLimit-Policy`.
    pub policy: String,
    /// `RateLimit`.
    pub state: String,
    /// `Retry-After`, seconds, when refused.
    pub retry_after: Option<u64>,
}

pub struct ClientLimiter {
    spec: RateLimitSpec,
    limiter: Limiter,
    clock: DefaultClock,
    policy: String,
}

impl ClientLimiter {
    pub fn new(spec: RateLimitSpec) -> ClientLimiter {
        let clock = DefaultClock::default();
        let limiter = RateLimiter::dashmap_with_clock(spec.quota(), clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        ClientLimiter {
            policy: format!("\"default\";q={};w={}", spec.burst, spec.window_secs()),
            spec,
            limiter,
            clock,
        }
    }

    pub fn check(&self, key: &ClientKey) -> Decision {
        let per_cell = self.spec.quota().replenish_interval().as_secs_f64();
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = self.spec.burst.get().saturating_sub(remaining);
                // Until the bucket is full again.
                let reset = (f64::from(missing) * per_cell).ceil() as u64;
                Decision {
                    allowed: true,
                    policy: self.policy.clone(),
                    state: format!("\"default\";r={remaining};t={reset}"),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                // Whole seconds, rounded up: a client waiting that long gets in.
                let wait = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let wait = wait.max(1);
                Decision {
                    allowed: false,
                    policy: self.policy.clone(),
                    state: format!("\"default\";r=0;t={wait}"),
                    retry_after: Some(wait),
                }
            }
        }
    }

    /// Forgets the buckets of clients idle long enough to be full again, so the map
    /// holds only recent clients; returns how many remain.
    pub fn sweep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }
}

/// Addresses refused outright until a time: the admin API's lock-out once an address
/// has used up its failed logins (a bucket cannot be looked at without charging it).
#[derive(Default)]
pub struct Lockout {
    until: Mutex<HashMap<IpAddr, Instant>>,
}

/// More locked-out addresses than this are not recorded (their failures are still
/// limited by the bucket); a bound on what an attacker with many addresses can make
/// the edge hold.
const MAX_LOCKED_OUT: usize = 100_000;

impl Lockout {
    /// Seconds left, rounded up, when `ip` is locked out.
    pub fn remaining(&self, ip: IpAddr) -> Option<u64> {
        let until = *self.until.lock().expect("the lock-out map").get(&ip)?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    pub fn lock(&self, ip: IpAddr, wait: Duration) {
        let mut until = self.until.lock().expect("the lock-out map");
        if until.len() < MAX_LOCKED_OUT || until.contains_key(&ip) {
            until.insert(ip, Instant::now() + wait);
        }
    }

    /// Drops the lock-outs that ran out; returns how many remain.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut until = self.until.lock().expect("the lock-out map");
        until.retain(|_, t| *t > now);
        until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_reads_as_documented_and_bad_ones_say_why() {
        let spec: RateLimitSpec = "100/s,burst=200".parse().unwrap();
        assert_eq!(
            (spec.count.get(), spec.per, spec.burst.get()),
            (100, Duration::from_secs(1), 200)
        );
        let spec: RateLimitSpec = "30/m".parse().unwrap();
        assert_eq!((spec.burst.get(), spec.window_secs()), (30, 60));
        for bad in [
            "",
            "100",
            "0/s",
            "10/d",
            "10/s,burst=0",
            "10/s,bust=3",
            "x/s",
        ] {
            assert!(bad.parse::<RateLimitSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_bucket_lets_the_burst_through_then_refuses_with_a_wait() {
        let limiter = ClientLimiter::new("1/m,burst=3".parse().unwrap());
        let key = ClientKey::Subject("alice".into());
        let states: Vec<String> = (0..3).map(|_| limiter.check(&key).state).collect();
        assert_eq!(
            states,
            [
                "\"default\";r=2;t=60",
                "\"default\";r=1;t=120",
                "\"default\";r=0;t=180"
            ]
        );
        let refused = limiter.check(&key);
        assert!(!refused.allowed);
        assert!(matches!(refused.retry_after, Some(59..=60)), "{refused:?}");
        assert_eq!(refused.policy, "\"default\";q=3;w=180");
        // Another client has its own bucket.
        assert!(limiter.check(&ClientKey::Subject("bob".into())).allowed);
    }

    #[test]
    fn idle_clients_are_forgotten_once_their_buckets_are_full_again() {
        // One cell per millisecond: a bucket is full again 1 ms after its last use.
        let limiter = ClientLimiter::new("1000/s,burst=1".parse().unwrap());
        for i in 0..100u8 {
            limiter.check(&ClientKey::Address(IpAddr::from([10, 0, 0, i])));
        }
        assert!(limiter.sweep() <= 100);
        // Poll (with a deadline) until the refill has happened; then none is left.
        let deadline = Instant::now() + Duration::from_secs(5);
        while limiter.sweep() > 0 {
            assert!(Instant::now() < deadline, "idle buckets were never dropped");
            std::thread::yield_now();
        }
        // A client still inside its window is kept.
        let slow = ClientLimiter::new("1/m,burst=1".parse().unwrap());
        slow.check(&ClientKey::Subject("alice".into()));
        assert_eq!(slow.sweep(), 1);
    }
}
