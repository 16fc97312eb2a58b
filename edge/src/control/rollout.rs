//! The progressive rollout: P steps toward v2, one step per interval, while v2 stays
//! healthy, and goes back to 100 by itself when it does not. The state machine is pure
//! (the caller supplies the time and the window's counts), so every rule has a test.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::stats::{Counts, FlavorCounts, ShadowCounts};

/// How a rollout proceeds and when it fails: the body of `PUT /admin/rollout`. Every
/// field may be left out for its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutPlan {
    /// The values P takes, decreasing, each 0–100. Only those below the current P count.
    #[serde(default = "default_steps")]
    #[schema(example = json!([90, 75, 50, 25, 10, 0]), min_items = 1, max_items = 101, value_type = Vec<u8>)]
    pub steps: Vec<u8>,
    /// How long each step lasts before v2 is judged on it, in seconds (at least 1).
    #[serde(
        default = "default_interval",
        deserialize_with = "crate::json::whole_number"
    )]
    #[schema(example = 30, minimum = 1, maximum = 86400)]
    pub interval_seconds: u64,
    /// Highest share of v2 calls that may end UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS or
    /// DEADLINE_EXCEEDED in a window (0–1).
    #[serde(default = "default_error_rate")]
    #[schema(example = 0.01, minimum = 0, maximum = 1)]
    pub max_error_rate: f64,
    /// Highest p99 latency of v2 calls in a window, in ms.
    #[serde(default = "default_p99")]
    #[schema(example = 250, exclusive_minimum = 0)]
    pub max_p99_ms: f64,
    /// Fewest v2 calls a window needs to be judged; with fewer it is inconclusive.
    #[serde(
        default = "default_min_requests",
        deserialize_with = "crate::json::whole_number"
    )]
    #[schema(example = 20, minimum = 1)]
    pub min_requests: u64,
    /// Failed checks after which the rollout rolls back to P = 100 (at least 1).
    #[serde(
        default = "default_threshold",
        deserialize_with = "crate::json::whole_number"
    )]
    #[schema(example = 2, minimum = 1)]
    pub failure_threshold: u32,
    /// Highest share of shadow comparisons that may mismatch in a window (0–1), or null
    /// not to judge them.
    #[serde(default)]
    #[schema(example = json!(null), minimum = 0, maximum = 1)]
    pub max_shadow_mismatch_rate: Option<f64>,
}

fn default_steps() -> Vec<u8> {
    vec![90, 75, 50, 25, 10, 0]
}

fn default_interval() -> u64 {
    30
}

fn default_error_rate() -> f64 {
    0.01
}

fn default_p99() -> f64 {
    250.0
}

fn default_min_requests() -> u64 {
    20
}

fn default_threshold() -> u32 {
    2
}

impl Default for RolloutPlan {
    fn default() -> Self {
        RolloutPlan {
            steps: default_steps(),
            interval_seconds: default_interval(),
            max_error_rate: default_error_rate(),
            max_p99_ms: default_p99(),
            min_requests: default_min_requests(),
            failure_threshold: default_threshold(),
            max_shadow_mismatch_rate: None,
        }
    }
}

impl RolloutPlan {
    /// The first invalid field and why, in the REST names.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, why: &str| Err((field.to_owned(), why.to_owned()));
        if self.steps.is_empty() {
            return bad("steps", "must name at least one step");
        }
        for (i, &step) in self.steps.iter().enumerate() {
            if step > 100 {
                return bad(&format!("steps[{i}]"), "must be between 0 and 100");
            }
            if i > 0 && step >= self.steps[i - 1] {
                return bad(&format!("steps[{i}]"), "steps must decrease");
            }
        }
        if self.interval_seconds == 0 {
            return bad("intervalSeconds", "must be at least 1");
        }
        if self.interval_seconds > 86_400 {
            return bad("intervalSeconds", "must be at most 86400 (a day)");
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return bad("maxErrorRate", "must be between 0 and 1");
        }
        if !(self.max_p99_ms.is_finite() && self.max_p99_ms > 0.0) {
            return bad("maxP99Ms", "must be a number of ms above 0");
        }
        if !(1..=1_000_000_000).contains(&self.min_requests) {
            return bad("minRequests", "must be between 1 and 1000000000");
        }
        if !(1..=1000).contains(&self.failure_threshold) {
            return bad("failureThreshold", "must be between 1 and 1000");
        }
        if let Some(rate) = self.max_shadow_mismatch_rate
            && !(0.0..=1.0).contains(&rate)
        {
            return bad("maxShadowMismatchRate", "must be between 0 and 1, or null");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum State {
    #[default]
    Idle,
    Progressing,
    Paused,
    Completed,
    RolledBack,
    Aborted,
}

/// One flavor's figures over a window, as the history records them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub requests: u64,
    pub error_rate: f64,
    /// Null without calls.
    pub p99_ms: Option<f64>,
}

impl Figures {
    pub fn of(counts: &FlavorCounts) -> Figures {
        Figures {
            requests: counts.requests,
            error_rate: round(counts.error_rate(), 4),
            p99_ms: counts.quantile_ms(0.99).map(|p| round(p, 2)),
        }
    }
}

/// The shadow comparisons over a window, as the history records them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowFigures {
    pub compared: u64,
    pub mismatched: u64,
    /// Null without comparisons.
    pub mismatch_rate: Option<f64>,
}

impl ShadowFigures {
    pub fn of(counts: &ShadowCounts) -> ShadowFigures {
        ShadowFigures {
            compared: counts.compared,
            mismatched: counts.mismatched,
            mismatch_rate: counts.mismatch_rate().map(|r| round(r, 4)),
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Something that happened to the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: DateTime<Utc>,
    /// The dial after the event.
    #[serde(rename = "P")]
    pub p: u8,
    /// started, advanced, held, failed, rolledBack, completed, paused, resumed, aborted,
    /// promoted.
    pub event: String,
    pub reason: String,
    /// The window judged, for checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v1: Option<Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v2: Option<Figures>,
    /// The window's shadow comparisons, for checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowFigures>,
}

/// Most events the history keeps (the oldest go first).
const HISTORY: usize = 200;

/// The rollout, as `GET /admin/rollout` shows it and the state file keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub state: State,
    /// The plan, while there is or was one.
    pub plan: Option<RolloutPlan>,
    /// P when the rollout started (where abort goes back to).
    pub started_from: Option<u8>,
    /// The steps it takes: those of the plan below where it started.
    pub steps: Vec<u8>,
    /// The index in `steps` of the step P is at.
    pub step: usize,
    pub failed_checks: u32,
    pub inconclusive_checks: u32,
    /// When the current step is judged (while progressing).
    pub next_check_at: Option<DateTime<Utc>>,
    /// When the window being judged began: the step's start, or the last check.
    pub window_start: Option<DateTime<Utc>>,
    pub history: Vec<Event>,
}

/// Why a control cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// What a check of v2 over a window concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too little data to judge: hold.
    Inconclusive(String),
    Pass,
    Fail(Vec<String>),
}

/// Judges v2 over a window's counts, by the plan's limits.
pub fn judge(plan: &RolloutPlan, window: &Counts) -> Verdict {
    let v2 = &window.v2;
    if v2.requests < plan.min_requests {
        // Too little data to judge, unless what there is already breaks a limit whatever
        // the missing calls would be (had every one of them succeeded at once): a v2 that
        // hangs or fails slows its clients down to a trickle of calls, and must not hide
        // behind the trickle.
        let floor = plan.min_requests as f64;
        let mut certain = Vec::new();
        if v2.errors as f64 / floor > plan.max_error_rate {
            certain.push(format!(
                "errorRate at least {:.4} > maxErrorRate {} ({} of {} v2 calls failed, fewer than minRequests {})",
                v2.errors as f64 / floor,
                plan.max_error_rate,
                v2.errors,
                v2.requests,
                plan.min_requests
            ));
        }
        let slow = v2.slower_than_ms(plan.max_p99_ms);
        if slow as f64 / floor > 0.01 {
            certain.push(format!(
                "p99Ms above maxP99Ms {} ({slow} of {} v2 calls took longer, fewer than minRequests {})",
                plan.max_p99_ms, v2.requests, plan.min_requests
            ));
        }
        if !certain.is_empty() {
            return Verdict::Fail(certain);
        }
        return Verdict::Inconclusive(format!(
            "{} v2 calls, fewer than minRequests {}",
            v2.requests, plan.min_requests
        ));
    }
    let mut failures = Vec::new();
    let error_rate = v2.error_rate();
    if error_rate > plan.max_error_rate {
        failures.push(format!(
            "errorRate {:.4} > maxErrorRate {}",
            error_rate, plan.max_error_rate
        ));
    }
    if let Some(p99) = v2.quantile_ms(0.99)
        && p99 > plan.max_p99_ms
    {
        failures.push(format!("p99Ms {:.1} > maxP99Ms {}", p99, plan.max_p99_ms));
    }
    if let Some(limit) = plan.max_shadow_mismatch_rate {
        match window.shadow.mismatch_rate() {
            None => {
                return Verdict::Inconclusive(
                    "no shadow comparisons to judge maxShadowMismatchRate".into(),
                );
            }
            Some(rate) if rate > limit => failures.push(format!(
                "shadowMismatchRate {rate:.4} > maxShadowMismatchRate {limit}"
            )),
            Some(_) => {}
        }
    }
    if failures.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(failures)
    }
}

fn after(at: DateTime<Utc>, seconds: u64) -> DateTime<Utc> {
    at + chrono::TimeDelta::seconds(seconds.min(i64::MAX as u64) as i64)
}

impl Rollout {
    /// P now, given the dial (while a rollout holds a step, that step).
    fn record(&mut self, at: DateTime<Utc>, p: u8, event: &str, reason: impl Into<String>) {
        self.record_check(at, p, event, reason, None);
    }

    fn record_check(
        &mut self,
        at: DateTime<Utc>,
        p: u8,
        event: &str,
        reason: impl Into<String>,
        window: Option<&Counts>,
    ) {
        self.history.push(Event {
            at,
            p,
            event: event.to_owned(),
            reason: reason.into(),
            v1: window.map(|w| Figures::of(&w.v1)),
            v2: window.map(|w| Figures::of(&w.v2)),
            shadow: window.map(|w| ShadowFigures::of(&w.shadow)),
        });
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Progressing | State::Paused)
    }

    /// Starts a rollout from the dial's `p`: P goes to the first step below it at once.
    /// Returns the new P.
    pub fn start(&mut self, plan: RolloutPlan, p: u8, now: DateTime<Utc>) -> Result<u8, Refused> {
        if self.is_running() {
            return Err(Refused(format!(
                "a rollout is already {}: abort it first",
                if self.state == State::Paused {
                    "paused"
                } else {
                    "progressing"
                }
            )));
        }
        let steps: Vec<u8> = plan.steps.iter().copied().filter(|&s| s < p).collect();
        let Some(&first) = steps.first() else {
            return Err(Refused(format!(
                "no step of {:?} is below the current P {p}: nothing to roll out",
                plan.steps
            )));
        };
        let interval = plan.interval_seconds;
        let history = std::mem::take(&mut self.history);
        *self = Rollout {
            state: State::Progressing,
            plan: Some(plan),
            started_from: Some(p),
            steps,
            step: 0,
            failed_checks: 0,
            inconclusive_checks: 0,
            next_check_at: Some(after(now, interval)),
            window_start: Some(now),
            history,
        };
        self.record(now, first, "started", format!("from P={p}"));
        Ok(first)
    }

    /// The P of the current step.
    pub fn current_p(&self) -> Option<u8> {
        self.steps.get(self.step).copied()
    }

    /// Whether a check is due at `now`.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        self.state == State::Progressing && self.next_check_at.is_some_and(|at| now >= at)
    }

    /// Applies the verdict on the window that ended at `now`; returns the new P if the
    /// dial must move.
    pub fn check(&mut self, verdict: Verdict, window: &Counts, now: DateTime<Utc>) -> Option<u8> {
        let plan = self.plan.clone()?;
        if self.state != State::Progressing {
            return None;
        }
        let p = self.current_p()?;
        self.window_start = Some(now);
        self.next_check_at = Some(after(now, plan.interval_seconds));
        match verdict {
            Verdict::Inconclusive(why) => {
                self.inconclusive_checks += 1;
                self.record_check(now, p, "held", why, Some(window));
                None
            }
            Verdict::Pass if self.step + 1 >= self.steps.len() => {
                self.state = State::Completed;
                self.next_check_at = None;
                self.record_check(now, p, "completed", "the last step passed", Some(window));
                None
            }
            Verdict::Pass => {
                self.step += 1;
                let next = self.steps[self.step];
                self.record_check(now, next, "advanced", format!("P={p} passed"), Some(window));
                Some(next)
            }
            Verdict::Fail(reasons) => {
                self.failed_checks += 1;
                let reasons = reasons.join("; ");
                if self.failed_checks >= plan.failure_threshold {
                    self.state = State::RolledBack;
                    self.next_check_at = None;
                    self.record_check(
                        now,
                        100,
                        "rolledBack",
                        format!(
                            "{} failed checks (failureThreshold {}); last: {reasons}",
                            self.failed_checks, plan.failure_threshold
                        ),
                        Some(window),
                    );
                    Some(100)
                } else {
                    self.record_check(now, p, "failed", reasons, Some(window));
                    None
                }
            }
        }
    }

    /// Stops the clock, keeping the step. `why` says who or what paused it.
    pub fn pause(&mut self, p: u8, why: &str, now: DateTime<Utc>) -> Result<(), Refused> {
        if self.state != State::Progressing {
            return Err(Refused(format!(
                "the rollout is {:?}, not progressing",
                self.state
            )));
        }
        self.state = State::Paused;
        self.next_check_at = None;
        self.record(now, p, "paused", why);
        Ok(())
    }

    /// Goes on from the step it paused at (P goes back to it), with a fresh window.
    pub fn resume(&mut self, now: DateTime<Utc>) -> Result<u8, Refused> {
        if self.state != State::Paused {
            return Err(Refused(format!(
                "the rollout is {:?}, not paused",
                self.state
            )));
        }
        let plan = self.plan.clone().ok_or_else(|| Refused("no plan".into()))?;
        let p = self.current_p().ok_or_else(|| Refused("no step".into()))?;
        self.state = State::Progressing;
        self.window_start = Some(now);
        self.next_check_at = Some(after(now, plan.interval_seconds));
        self.record(now, p, "resumed", "");
        Ok(p)
    }

    /// Ends the rollout where it started.
    pub fn abort(&mut self, now: DateTime<Utc>) -> Result<u8, Refused> {
        if !self.is_running() {
            return Err(Refused(format!(
                "the rollout is {:?}: nothing to abort",
                self.state
            )));
        }
        let back = self.started_from.unwrap_or(100);
        self.state = State::Aborted;
        self.next_check_at = None;
        self.record(now, back, "aborted", format!("back to P={back}"));
        Ok(back)
    }

    /// Ends the rollout at its last step, without judging the rest.
    pub fn promote(&mut self, now: DateTime<Utc>) -> Result<u8, Refused> {
        if !self.is_running() {
            return Err(Refused(format!(
                "the rollout is {:?}: nothing to promote",
                self.state
            )));
        }
        let last = *self.steps.last().ok_or_else(|| Refused("no step".into()))?;
        self.step = self.steps.len() - 1;
        self.state = State::Completed;
        self.next_check_at = None;
        self.record(now, last, "promoted", "straight to the last step");
        Ok(last)
    }

    /// After a restart: a running rollout keeps its step, and judges a fresh window (the
    /// traffic counts did not survive).
    pub fn restarted(&mut self, now: DateTime<Utc>) {
        if let (State::Progressing, Some(plan)) = (self.state, &self.plan) {
            self.window_start = Some(now);
            self.next_check_at = Some(after(now, plan.interval_seconds));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RolloutPlan {
        RolloutPlan {
            steps: vec![90, 75, 50, 25, 10, 0],
            interval_seconds: 30,
            max_error_rate: 0.01,
            max_p99_ms: 250.0,
            min_requests: 20,
            failure_threshold: 2,
            max_shadow_mismatch_rate: None,
        }
    }

    fn window(requests: u64, errors: u64, ms: u64) -> Counts {
        let mut v2 = FlavorCounts::default();
        let recorder = super::super::stats::Recorder::default();
        for i in 0..requests {
            let code = if i < errors {
                tonic::Code::Unavailable
            } else {
                tonic::Code::Ok
            };
            recorder.call(
                tandem::domain::Flavor::V2,
                code,
                std::time::Duration::from_millis(ms),
            );
        }
        v2.add(&recorder.take().v2);
        Counts {
            v2,
            ..Counts::default()
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_000_000 + s, 0).unwrap()
    }

    #[test]
    fn plans_name_their_first_bad_field() {
        let field = |p: RolloutPlan| p.validate().unwrap_err().0;
        assert_eq!(
            field(RolloutPlan {
                steps: vec![50, 60],
                ..plan()
            }),
            "steps[1]"
        );
        assert_eq!(
            field(RolloutPlan {
                steps: vec![101],
                ..plan()
            }),
            "steps[0]"
        );
        assert_eq!(
            field(RolloutPlan {
                steps: vec![],
                ..plan()
            }),
            "steps"
        );
        assert_eq!(
            field(RolloutPlan {
                interval_seconds: 0,
                ..plan()
            }),
            "intervalSeconds"
        );
        assert_eq!(
            field(RolloutPlan {
                max_error_rate: 1.5,
                ..plan()
            }),
            "maxErrorRate"
        );
        assert_eq!(
            field(RolloutPlan {
                max_p99_ms: -1.0,
                ..plan()
            }),
            "maxP99Ms"
        );
        assert_eq!(
            field(RolloutPlan {
                failure_threshold: 0,
                ..plan()
            }),
            "failureThreshold"
        );
        assert_eq!(
            field(RolloutPlan {
                max_shadow_mismatch_rate: Some(2.0),
                ..plan()
            }),
            "maxShadowMismatchRate"
        );
        assert!(plan().validate().is_ok());
    }

    #[test]
    fn a_healthy_v2_walks_every_step_to_completion() {
        let mut r = Rollout::default();
        assert_eq!(r.start(plan(), 100, t(0)), Ok(90));
        let mut p = 90;
        let mut now = 0;
        while r.state == State::Progressing {
            now += 30;
            assert!(r.due(t(now)));
            if let Some(next) = r.check(
                judge(&plan(), &window(100, 0, 5)),
                &window(100, 0, 5),
                t(now),
            ) {
                assert!(next < p, "P only falls: {p} -> {next}");
                p = next;
            }
        }
        assert_eq!((r.state, p), (State::Completed, 0));
        let events: Vec<&str> = r.history.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events.first(), Some(&"started"));
        assert_eq!(events.last(), Some(&"completed"));
    }

    #[test]
    fn a_rollout_starts_below_the_current_p_only() {
        let mut r = Rollout::default();
        assert_eq!(r.start(plan(), 60, t(0)), Ok(50));
        assert_eq!(r.steps, [50, 25, 10, 0]);
        let mut done = Rollout::default();
        assert!(done.start(plan(), 0, t(0)).is_err(), "no step below P=0");
        assert!(r.start(plan(), 50, t(0)).is_err(), "one rollout at a time");
    }

    #[test]
    fn too_little_data_holds_and_failures_roll_back_at_the_threshold() {
        let mut r = Rollout::default();
        r.start(plan(), 100, t(0)).unwrap();
        let quiet = window(5, 0, 5);
        assert_eq!(r.check(judge(&plan(), &quiet), &quiet, t(30)), None);
        assert_eq!((r.inconclusive_checks, r.current_p()), (1, Some(90)));

        let bad = window(100, 10, 5);
        assert!(matches!(judge(&plan(), &bad), Verdict::Fail(_)));
        assert_eq!(
            r.check(judge(&plan(), &bad), &bad, t(60)),
            None,
            "one failure holds"
        );
        assert_eq!(r.check(judge(&plan(), &bad), &bad, t(90)), Some(100));
        assert_eq!(r.state, State::RolledBack);
        let last = r.history.last().unwrap();
        assert!(last.reason.contains("errorRate"), "{}", last.reason);
        assert_eq!(last.v2.as_ref().unwrap().requests, 100);
    }

    #[test]
    fn a_trickle_of_calls_that_already_breaks_a_limit_fails_without_waiting() {
        // A hung v2: a few calls, each ending at its 5 s deadline.
        let mut hung = window(16, 16, 5000);
        assert!(
            matches!(judge(&plan(), &hung), Verdict::Fail(_)),
            "{:?}",
            judge(&plan(), &hung)
        );
        // Slow but not failing: the slow calls alone break the p99 limit.
        hung = window(3, 0, 900);
        match judge(&plan(), &hung) {
            Verdict::Fail(why) => assert!(why[0].contains("p99Ms"), "{why:?}"),
            other => panic!("{other:?}"),
        }
        // A few healthy calls decide nothing.
        assert!(matches!(
            judge(&plan(), &window(5, 0, 5)),
            Verdict::Inconclusive(_)
        ));
    }

    #[test]
    fn slow_v2_fails_its_latency_limit() {
        let slow = window(50, 0, 400);
        match judge(&plan(), &slow) {
            Verdict::Fail(why) => assert!(why[0].contains("p99Ms"), "{why:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn controls_pause_resume_abort_and_promote() {
        let mut r = Rollout::default();
        r.start(plan(), 100, t(0)).unwrap();
        r.pause(90, "by hand", t(1)).unwrap();
        assert!(!r.due(t(100)), "a paused rollout is never judged");
        assert_eq!(r.resume(t(2)), Ok(90));
        assert_eq!(r.promote(t(3)), Ok(0));
        assert_eq!(r.state, State::Completed);
        let mut r = Rollout::default();
        r.start(plan(), 80, t(0)).unwrap();
        assert_eq!(r.abort(t(1)), Ok(80));
        assert!(r.abort(t(2)).is_err());
    }
}
