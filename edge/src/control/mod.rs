//! Migration control: the routing dial, shadow reads and the progressive rollout, owned
//! in one place. Every change (an operator's, the rollout's own) goes through
//! [`Control::change`], which versions it, applies it, writes it next to the routing file
//! (so a restart keeps it) and, with replicas, announces it to the others. The analysis
//! runs in the replica that is leader; every replica counts its own traffic and shares
//! it, so the leader judges all of it.

pub mod compare;
pub mod rollout;
pub mod shadow;
pub mod stats;

#[cfg(feature = "cluster")]
pub mod cluster;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::routing::{Reload, Routing, RoutingConfig};
use rollout::{Refused, Rollout};
use shadow::{Shadow, ShadowSettings};
use stats::{Counts, MismatchExample, Recorder, Series, ShadowCounts};

/// How often this replica's counts are taken and shared.
const FLUSH: Duration = Duration::from_millis(250);
/// How long after a window ends it is judged: the last counts of every replica have
/// arrived by then.
const GRACE: chrono::TimeDelta = chrono::TimeDelta::milliseconds(750);
/// Most recent mismatch examples kept.
const RECENT: usize = 50;

/// The order of changes: later time first, then the replica's id, so every replica
/// settles on the same state whatever order the announcements came in.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub millis: i64,
    pub replica: String,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.millis, self.replica)
    }
}

impl std::str::FromStr for Version {
    type Err = ();
    fn from_str(s: &str) -> Result<Version, ()> {
        let (millis, replica) = s.split_once('-').ok_or(())?;
        Ok(Version {
            millis: millis.parse().map_err(|_| ())?,
            replica: replica.to_owned(),
        })
    }
}

/// Everything the replicas share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub version: Version,
    pub dial: RoutingConfig,
    pub shadow: ShadowSettings,
    pub rollout: Rollout,
}

/// What the control file (next to the routing file) keeps; the dial is in the routing file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    version: Version,
    shadow: ShadowSettings,
    rollout: Rollout,
}

/// Why a change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Not now (the rollout's state does not allow it).
    #[error("{}", .0.0)]
    Refused(Refused),
    /// The change could not be written down, so it was not made.
    #[error("the change could not be saved: {0}")]
    Save(String),
}

/// A change being made: the whole state, to edit.
pub struct Draft {
    pub dial: RoutingConfig,
    pub shadow: ShadowSettings,
    pub rollout: Rollout,
    pub now: DateTime<Utc>,
}

/// Shadow results since this replica started, all replicas together.
#[derive(Default)]
struct ShadowTotals {
    counts: ShadowCounts,
    recent: VecDeque<MismatchExample>,
}

/// Where a clustered replica sends what it announces.
pub trait Announce: Send + Sync {
    fn state(&self, snapshot: &Snapshot);
    fn counts(&self, at_millis: i64, counts: &Counts);
}

pub struct Control {
    pub routing: Routing,
    pub shadow: Arc<Shadow>,
    pub recorder: Arc<Recorder>,
    series: Mutex<Series>,
    totals: Mutex<ShadowTotals>,
    rollout: Mutex<Rollout>,
    version: Mutex<Version>,
    /// The last routing files this edge wrote (version, dial): a read of one of them that
    /// arrives after a newer state is this edge's own stale write, not an operator's edit.
    written: Mutex<VecDeque<(String, RoutingConfig)>>,
    /// Serializes changes: each is read, edited, saved and announced before the next.
    changes: tokio::sync::Mutex<()>,
    state_file: PathBuf,
    pub replica: String,
    /// Whether this replica runs the analysis. Alone, it always does.
    leader: AtomicBool,
    /// Whether this replica is connected to its cluster (false when alone).
    clustered: AtomicBool,
    leader_gauge: Gauge,
    announce: Mutex<Option<Arc<dyn Announce>>>,
}

/// The control file of a routing file: `control.json` in its directory.
pub fn state_file(routing_file: &Path) -> PathBuf {
    routing_file.with_file_name("control.json")
}

impl Control {
    /// Loads the dial and the control file; a file that cannot be read or parsed is an
    /// error (at start-up there is no last good value).
    pub fn load(routing_file: &Path, registry: &mut Registry) -> Result<Control, String> {
        let routing = Routing::load(routing_file, registry)?;
        let state_file = state_file(routing_file);
        let saved: Saved = match std::fs::read_to_string(&state_file) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a control file ({e})", state_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", state_file.display())),
        };
        let mut rollout = saved.rollout;
        rollout.restarted(Utc::now());
        let shadow = Arc::new(Shadow::new(saved.shadow, registry));
        let leader_gauge = Gauge::default();
        registry.register(
            "control_leader",
            "1 while this edge runs the rollout analysis",
            leader_gauge.clone(),
        );
        let control = Control {
            routing,
            shadow,
            recorder: Arc::default(),
            series: Mutex::default(),
            totals: Mutex::default(),
            rollout: Mutex::new(rollout),
            version: Mutex::new(saved.version),
            written: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            state_file,
            replica: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            leader: AtomicBool::new(true),
            clustered: AtomicBool::new(false),
            leader_gauge,
            announce: Mutex::new(None),
        };
        control.leader_gauge.set(1);
        Ok(control)
    }

    pub fn dial(&self) -> RoutingConfig {
        self.routing.current()
    }

    pub fn rollout(&self) -> Rollout {
        lock(&self.rollout).clone()
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn is_clustered(&self) -> bool {
        self.clustered.load(Ordering::Relaxed)
    }

    pub fn set_clustered(&self, clustered: bool) {
        self.clustered.store(clustered, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        if self.leader.swap(leader, Ordering::Relaxed) != leader {
            tracing::info!(replica = %self.replica, leader, "analysis leadership changed");
        }
        self.leader_gauge.set(i64::from(leader));
    }

    /// Replicas announce through `announce` from now on.
    pub fn set_announce(&self, announce: Arc<dyn Announce>) {
        *lock(&self.announce) = Some(announce);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: lock(&self.version).clone(),
            dial: self.dial(),
            shadow: self.shadow.settings(),
            rollout: self.rollout(),
        }
    }

    /// Makes a change: `edit` gets the whole state; what it leaves is applied, saved and
    /// announced, under a new version.
    pub async fn change<T>(
        &self,
        edit: impl FnOnce(&mut Draft) -> Result<T, Refused>,
    ) -> Result<T, ChangeError> {
        let _one_at_a_time = self.changes.lock().await;
        let mut draft = Draft {
            dial: self.dial(),
            shadow: self.shadow.settings(),
            rollout: self.rollout(),
            now: crate::control::now(),
        };
        let outcome = edit(&mut draft).map_err(ChangeError::Refused)?;
        let version = {
            let last = lock(&self.version).clone();
            Version {
                millis: draft.now.timestamp_millis().max(last.millis + 1),
                replica: self.replica.clone(),
            }
        };
        self.commit(
            Snapshot {
                version,
                dial: draft.dial,
                shadow: draft.shadow,
                rollout: draft.rollout,
            },
            true,
        )
        .await?;
        Ok(outcome)
    }

    /// Applies a state another replica announced, if it is newer than this one's.
    pub async fn adopt(&self, snapshot: Snapshot) {
        let _one_at_a_time = self.changes.lock().await;
        if snapshot.version <= *lock(&self.version) {
            return;
        }
        let version = snapshot.version.clone();
        if let Err(e) = self.commit(snapshot, false).await {
            tracing::warn!(error = %e, %version, "could not save the state another edge announced");
        }
    }

    /// Applies, saves and (if `announce`) announces a state. Called with `changes` held.
    async fn commit(&self, snapshot: Snapshot, announce: bool) -> Result<(), ChangeError> {
        let version = snapshot.version.to_string();
        if snapshot.dial != self.dial() || announce {
            self.routing
                .set(snapshot.dial, &version)
                .await
                .map_err(ChangeError::Save)?;
            let mut written = lock(&self.written);
            if written.len() == 16 {
                written.pop_front();
            }
            written.push_back((version.clone(), snapshot.dial));
        }
        let saved = Saved {
            version: snapshot.version.clone(),
            shadow: snapshot.shadow.clone(),
            rollout: snapshot.rollout.clone(),
        };
        let text = serde_json::to_string_pretty(&saved).expect("the state serializes") + "\n";
        let file = self.state_file.clone();
        tokio::task::spawn_blocking(move || crate::routing::write_atomically(&file, &text))
            .await
            .map_err(|e| ChangeError::Save(e.to_string()))?
            .map_err(ChangeError::Save)?;
        self.shadow.set(snapshot.shadow.clone());
        *lock(&self.rollout) = snapshot.rollout.clone();
        *lock(&self.version) = snapshot.version.clone();
        lock(&self.series).mark_p(Utc::now().timestamp(), snapshot.dial.p);
        tracing::info!(
            p = snapshot.dial.p,
            mode = ?snapshot.dial.mode,
            rollout = ?snapshot.rollout.state,
            %version,
            "control state changed"
        );
        if announce && let Some(out) = lock(&self.announce).clone() {
            out.state(&snapshot);
        }
        Ok(())
    }

    /// Counts from another replica.
    pub fn add_counts(&self, at_millis: i64, counts: &Counts) {
        lock(&self.series).add(at_millis.div_euclid(1000), counts);
        let mut totals = lock(&self.totals);
        totals.counts.add(&ShadowCounts {
            examples: Vec::new(),
            ..counts.shadow.clone()
        });
        for example in &counts.shadow.examples {
            totals.recent.push_front(example.clone());
        }
        totals.recent.truncate(RECENT);
    }

    /// Takes this replica's counts, keeps them, and shares them.
    fn flush(&self) {
        let counts = self.recorder.take();
        if counts.is_empty() {
            return;
        }
        let at = Utc::now().timestamp_millis();
        self.add_counts(at, &counts);
        if let Some(out) = lock(&self.announce).clone() {
            out.counts(at, &counts);
        }
    }

    /// The counts of `[from, to)`, all replicas together.
    pub fn window(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Counts {
        lock(&self.series).window(from.timestamp(), to.timestamp())
    }

    /// The kept traffic as points of `step` seconds.
    pub fn points(&self, step: usize) -> Vec<(i64, Counts, Option<u8>)> {
        lock(&self.series).points(step)
    }

    /// Shadow results since this replica started, and the latest mismatches.
    pub fn shadow_totals(&self) -> (ShadowCounts, Vec<MismatchExample>) {
        let totals = lock(&self.totals);
        (
            totals.counts.clone(),
            totals.recent.iter().cloned().collect(),
        )
    }

    /// Judges the current step if its window is over (leader only).
    async fn check_rollout(&self) {
        let now = crate::control::now();
        let due = {
            let rollout = lock(&self.rollout);
            match rollout.next_check_at {
                Some(end) if rollout.due(now - GRACE) => rollout.window_start.map(|s| (s, end)),
                _ => None,
            }
        };
        let Some((start, end)) = due else { return };
        let window = self.window(start, end);
        let outcome = self
            .change(|draft| {
                let Some(plan) = draft.rollout.plan.clone() else {
                    return Ok(());
                };
                // Another check may have run while the lock was awaited.
                if draft.rollout.next_check_at != Some(end) {
                    return Ok(());
                }
                let verdict = rollout::judge(&plan, &window);
                if let Some(p) = draft.rollout.check(verdict, &window, end) {
                    draft.dial.p = p;
                }
                Ok(())
            })
            .await;
        if let Err(e) = outcome {
            tracing::error!(error = %e, "the rollout check could not be saved");
        }
    }

    /// A change of the routing file: an operator's edit wins over a rollout (which it
    /// pauses); another replica's write (a newer version) is its change arriving early.
    async fn file_changed(&self, config: RoutingConfig, version: Option<String>) {
        {
            // Under the changes lock: a change committed between this check and the
            // store below would otherwise be overwritten by the older dial.
            let _one_at_a_time = self.changes.lock().await;
            let written_by_edge = version
                .as_deref()
                .and_then(|v| v.parse::<Version>().ok())
                .is_some_and(|v| v >= *lock(&self.version));
            if written_by_edge {
                // Its announcement carries the rest of the state; follow its dial meanwhile.
                self.routing.store(config);
                return;
            }
            // This edge's own write, read only after a newer state came in: old news.
            if let Some(v) = &version
                && lock(&self.written)
                    .iter()
                    .any(|(w, dial)| w == v && *dial == config)
            {
                return;
            }
            if config == self.dial() && version.is_some() {
                return;
            }
        }
        let changed = self
            .change(|draft| {
                draft.dial = config;
                if draft.rollout.state == rollout::State::Progressing {
                    let _ = draft.rollout.pause(
                        config.p,
                        "the routing file was changed by hand",
                        draft.now,
                    );
                }
                Ok(())
            })
            .await;
        if let Err(e) = changed {
            tracing::error!(error = %e, "cannot apply the routing file");
        }
    }

    /// Runs until `shutdown`: takes and shares the counts, follows the routing file, and
    /// (as leader) judges the rollout.
    pub async fn run(self: Arc<Self>, file_poll: Duration, shutdown: CancellationToken) {
        let mut flush = tokio::time::interval(FLUSH);
        let mut file = tokio::time::interval(file_poll);
        for tick in [&mut flush, &mut file] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.flush();
                    return;
                }
                _ = flush.tick() => {
                    self.flush();
                    if self.is_leader() {
                        self.check_rollout().await;
                    }
                }
                _ = file.tick() => {
                    if let Reload::Changed { config, version } = self.routing.reload().await {
                        self.file_changed(config, version).await;
                    }
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The current instant, to the millisecond (what the state file keeps).
pub fn now() -> DateTime<Utc> {
    tandem::domain::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_time_then_replica_and_print_back() {
        let a = Version {
            millis: 5,
            replica: "a".into(),
        };
        let b = Version {
            millis: 5,
            replica: "b".into(),
        };
        let later = Version {
            millis: 6,
            replica: "a".into(),
        };
        assert!(a < b && b < later);
        assert_eq!(later.to_string().parse::<Version>(), Ok(later));
        assert!("nonsense".parse::<Version>().is_err());
    }

    use rollout::RolloutPlan;

    #[tokio::test]
    async fn a_change_is_saved_next_to_the_routing_file_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routing.json");
        let control = Control::load(&file, &mut Registry::default()).unwrap();
        let plan = RolloutPlan {
            steps: vec![50, 0],
            interval_seconds: 60,
            max_error_rate: 0.01,
            max_p99_ms: 250.0,
            min_requests: 20,
            failure_threshold: 2,
            max_shadow_mismatch_rate: None,
        };
        control
            .change(|d| {
                d.dial.p = d.rollout.start(plan, d.dial.p, d.now)?;
                d.shadow.fraction = 0.25;
                Ok(())
            })
            .await
            .unwrap();
        let again = Control::load(&file, &mut Registry::default()).unwrap();
        assert_eq!(again.dial().p, 50);
        assert_eq!(again.shadow.settings().fraction, 0.25);
        assert_eq!(again.rollout().state, rollout::State::Progressing);
        assert_eq!(again.rollout().current_p(), Some(50));
        // An older announcement changes nothing; a newer one wins.
        let mut old = again.snapshot();
        old.version.millis -= 1;
        old.dial.p = 90;
        again.adopt(old).await;
        assert_eq!(again.dial().p, 50);
        let mut newer = again.snapshot();
        newer.version.millis += 10;
        newer.version.replica = "other".into();
        newer.dial.p = 25;
        again.adopt(newer).await;
        assert_eq!(again.dial().p, 25);
    }

    #[tokio::test]
    async fn a_late_read_of_its_own_write_is_not_taken_for_an_operators_edit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routing.json");
        let control = Control::load(&file, &mut Registry::default()).unwrap();
        control
            .change(|d| {
                d.dial.p = 40;
                Ok(())
            })
            .await
            .unwrap();
        let own = control.snapshot().version.to_string();
        // Another replica's P = 70 arrives before the file watcher read the 40.
        let mut newer = control.snapshot();
        newer.version.millis += 10;
        newer.version.replica = "other".into();
        newer.dial.p = 70;
        control.adopt(newer).await;
        let forty = RoutingConfig {
            p: 40,
            ..control.dial()
        };
        control.file_changed(forty, Some(own)).await;
        assert_eq!(control.dial().p, 70, "the stale read must not win");
        // An operator's edit (no version) still does.
        control
            .file_changed(
                RoutingConfig {
                    p: 10,
                    ..control.dial()
                },
                None,
            )
            .await;
        assert_eq!(control.dial().p, 10);
    }
}
