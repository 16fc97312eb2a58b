//! Shadow reads: a share of `GET /users/{userId}` is asked again of the flavor that did
//! not serve it, and the two answers are compared field by field. Where they differ, the
//! serving flavor is asked a second time, and a field on which its own two answers
//! disagree is noise (Twitter Diffy's rule), not a regression. All of it happens after
//! the client has its answer, through a bounded queue with deadlines of its own: a full
//! queue drops the shadow (and counts it), never the read. Writes are never shadowed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem::domain::Flavor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::compare;
use super::stats::{MismatchExample, Recorder, ShadowCounts};
use crate::upstream::Upstreams;

/// Reads waiting to be shadowed; past this, new ones are dropped.
const QUEUE: usize = 1024;
/// Shadow reads in flight at once.
const CONCURRENCY: usize = 8;
/// How long each shadow call may take.
const DEADLINE: Duration = Duration::from_secs(2);

/// What is shadowed and what is compared: the body of `PUT /admin/shadow`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowSettings {
    /// Share of user reads also sent to the other flavor, 0–1.
    #[serde(default)]
    #[schema(example = 0.1, minimum = 0, maximum = 1)]
    pub fraction: f64,
    /// Field paths left out of comparisons (`updatedAt`, `deliveryAddress`, …); a path
    /// also covers the fields inside it.
    #[serde(default)]
    #[schema(schema_with = ignore_schema)]
    pub ignore: Vec<String>,
}

/// What [`ShadowSettings::validate`] takes for `ignore`.
fn ignore_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    utoipa::openapi::ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[!-~]{1,128}$"))
                .min_length(Some(1))
                .max_length(Some(128)),
        )
        .max_items(Some(50))
        .examples([serde_json::json!(["updatedAt"])])
        .build()
}

impl ShadowSettings {
    /// The first invalid field and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.fraction.is_finite() && (0.0..=1.0).contains(&self.fraction)) {
            return Err(("fraction".into(), "must be between 0 and 1".into()));
        }
        if self.ignore.len() > 50 {
            return Err(("ignore".into(), "at most 50 field paths".into()));
        }
        for (i, path) in self.ignore.iter().enumerate() {
            let printable = path.chars().all(|c| c.is_ascii_graphic());
            if path.is_empty() || path.len() > 128 || !printable {
                return Err((
                    format!("ignore[{i}]"),
                    "must be a field path such as deliveryAddress.city".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A read the client has been answered, to shadow.
pub struct Job {
    pub request_id: String,
    pub user_id: String,
    pub served: Flavor,
    /// The served answer, as [`compare::answer`] makes it.
    pub answer: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FieldLabels {
    field: String,
}

pub struct Shadow {
    /// The fraction as f64 bits, read by every user read without a lock.
    fraction: AtomicU64,
    settings: RwLock<ShadowSettings>,
    queue: mpsc::Sender<Job>,
    jobs: std::sync::Mutex<Option<mpsc::Receiver<Job>>>,
    comparisons: Family<OutcomeLabels, Counter>,
    fields: Family<FieldLabels, Counter>,
}

impl Shadow {
    pub fn new(settings: ShadowSettings, registry: &mut Registry) -> Shadow {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let shadow = Shadow {
            fraction: AtomicU64::new(settings.fraction.to_bits()),
            settings: RwLock::new(settings),
            queue,
            jobs: std::sync::Mutex::new(Some(jobs)),
            comparisons: Family::default(),
            fields: Family::default(),
        };
        registry.register(
            "shadow_comparisons",
            "Shadow reads, by outcome: matched, mismatched, noise, failed, dropped",
            shadow.comparisons.clone(),
        );
        registry.register(
            "shadow_field_mismatches",
            "Fields on which the other flavor answered differently, by field path",
            shadow.fields.clone(),
        );
        shadow
    }

    pub fn settings(&self) -> ShadowSettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, settings: ShadowSettings) {
        self.fraction
            .store(settings.fraction.to_bits(), Ordering::Relaxed);
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    /// Whether this read is to be shadowed (a weighted coin).
    pub fn wanted(&self) -> bool {
        let fraction = f64::from_bits(self.fraction.load(Ordering::Relaxed));
        fraction > 0.0 && fastrand::f64() < fraction
    }

    /// Queues a read to shadow; a full queue drops it (counted).
    pub fn offer(&self, job: Job, recorder: &Recorder) {
        if self.queue.try_send(job).is_err() {
            self.comparisons
                .get_or_create(&OutcomeLabels { outcome: "dropped" })
                .inc();
            recorder.shadow(ShadowCounts {
                dropped: 1,
                ..ShadowCounts::default()
            });
        }
    }

    /// Shadows queued reads until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        upstreams: Upstreams,
        recorder: Arc<Recorder>,
        shutdown: CancellationToken,
    ) {
        let Some(jobs) = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let work = tokio_stream::wrappers::ReceiverStream::new(jobs).for_each_concurrent(
            CONCURRENCY,
            |job| {
                let (shadow, upstreams, recorder) =
                    (self.clone(), upstreams.clone(), recorder.clone());
                async move {
                    let ignore = shadow.settings().ignore;
                    let counts = compare_job(&job, &upstreams, &ignore).await;
                    shadow.count(&counts);
                    recorder.shadow(counts);
                }
            },
        );
        tokio::select! {
            _ = work => {}
            _ = shutdown.cancelled() => {}
        }
    }

    fn count(&self, counts: &ShadowCounts) {
        for (outcome, n) in [
            ("matched", counts.matched),
            ("mismatched", counts.mismatched),
            ("noise", counts.noise),
            ("failed", counts.failed),
        ] {
            if n > 0 {
                self.comparisons
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc_by(n);
            }
        }
        for (field, n) in &counts.fields {
            self.fields
                .get_or_create(&FieldLabels {
                    field: field.clone(),
                })
                .inc_by(*n);
        }
    }
}

/// Asks the other flavor, compares, and where they differ asks the served one again.
async fn compare_job(job: &Job, upstreams: &Upstreams, ignore: &[String]) -> ShadowCounts {
    let other = job.served.other();
    let theirs = upstreams
        .get_user_shadow(other, &job.user_id, &job.request_id, DEADLINE)
        .await;
    let Some(theirs) = compare::answer(&theirs) else {
        return ShadowCounts {
            failed: 1,
            ..ShadowCounts::default()
        };
    };
    let differing = compare::answers_differ(&job.answer, &theirs, ignore);
    let mut counts = ShadowCounts {
        compared: 1,
        ..ShadowCounts::default()
    };
    if differing.is_empty() {
        counts.matched = 1;
        return counts;
    }
    // Diffy's rule: what the serving flavor itself does not answer twice the same is
    // noise. Asked only when there is a difference to explain, so a matching read costs
    // one shadow call, not two. If its second answer failed, nothing is known to be noise.
    let again = upstreams
        .get_user_shadow(job.served, &job.user_id, &job.request_id, DEADLINE)
        .await;
    let noisy: Vec<String> = compare::answer(&again)
        .map(|again| {
            compare::answers_differ(&job.answer, &again, ignore)
                .into_iter()
                .map(|d| d.0)
                .collect()
        })
        .unwrap_or_default();
    let real: Vec<_> = differing
        .into_iter()
        .filter(|(path, _, _)| !noisy.contains(path))
        .collect();
    if real.is_empty() {
        counts.noise = 1;
        return counts;
    }
    counts.mismatched = 1;
    let at = chrono::Utc::now();
    for (field, served_value, other_value) in real {
        *counts.fields.entry(field.clone()).or_default() += 1;
        counts.examples.push(MismatchExample {
            request_id: job.request_id.clone(),
            user_id: job.user_id.clone(),
            field,
            served: job.served.as_str().to_owned(),
            served_value,
            other_value,
            at,
        });
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_their_bad_field() {
        let bad = |s: ShadowSettings| s.validate().unwrap_err().0;
        assert_eq!(
            bad(ShadowSettings {
                fraction: 1.5,
                ignore: vec![]
            }),
            "fraction"
        );
        assert_eq!(
            bad(ShadowSettings {
                fraction: -0.1,
                ignore: vec![]
            }),
            "fraction"
        );
        assert_eq!(
            bad(ShadowSettings {
                fraction: 0.5,
                ignore: vec!["ok".into(), "".into()]
            }),
            "ignore[1]"
        );
        assert!(
            ShadowSettings {
                fraction: 1.0,
                ignore: vec!["updatedAt".into()]
            }
            .validate()
            .is_ok()
        );
    }
}
