//! Which user-svc flavor serves a request: the strangler's dial. `P` is the percent of
//! user traffic for v1, set by the routing file (`{"P": 70}`) and `PUT /admin/routing`.
//!
//! Sticky mode (the default) puts each user id in one of 100 buckets by a stable hash;
//! bucket < P goes to v1. A user therefore always sees one flavor, and lowering P only
//! ever moves users from v1 to v2. Requests that name no user (creates) are split at
//! random with the same P. Random mode flips a P-weighted coin for every request, as the
//! original gateway did.
//!
//! [`Routing`] owns the live dial, its file (watched for changes) and its metrics.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tandem::domain::Flavor;
use tokio::sync::Mutex;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each user id always goes to the same flavor for a given P.
    #[default]
    Sticky,
    /// Every request flips its own coin.
    Random,
}

/// The routing file, and the body of `PUT /admin/routing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Percent of user traffic sent to user-svc v1 (0–100); the rest goes to v2.
    #[serde(rename = "P", deserialize_with = "crate::json::whole_number")]
    #[schema(minimum = 0, maximum = 100, example = 70)]
    pub p: u8,
    #[serde(default)]
    pub mode: Mode,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            p: 100,
            mode: Mode::Sticky,
        }
    }
}

impl RoutingConfig {
    pub fn parse(text: &str) -> Result<RoutingConfig, String> {
        let config: RoutingConfig =
            serde_json::from_str(text).map_err(|e| format!("not a routing config ({e})"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.p > 100 {
            return Err(format!("P must be between 0 and 100, not {}", self.p));
        }
        Ok(())
    }

    /// The config as one number, so P and mode change together: a request never sees a
    /// new P with the old mode.
    fn pack(self) -> u16 {
        u16::from(self.p) | (u16::from(self.mode == Mode::Random) << 8)
    }

    fn unpack(packed: u16) -> RoutingConfig {
        RoutingConfig {
            p: (packed & 0xff) as u8,
            mode: if packed >> 8 == 1 {
                Mode::Random
            } else {
                Mode::Sticky
            },
        }
    }
}

/// The bucket (0–99) of a user id: FNV-1a of its canonical (lowercase) text. Stable
/// across processes, restarts and versions, which stickiness depends on.
pub fn bucket(user_id: &str) -> u8 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(user_id.trim().to_ascii_lowercase().as_bytes());
    (hasher.finish() % 100) as u8
}

/// The flavor for a request, given the config and the user it is about, if any.
pub fn choose(config: RoutingConfig, user_id: Option<&str>) -> Flavor {
    let draw = match (config.mode, user_id) {
        (Mode::Sticky, Some(id)) => bucket(id),
        _ => fastrand::u8(0..100),
    };
    if draw < config.p {
        Flavor::V1
    } else {
        Flavor::V2
    }
}

/// The routing file as the edge writes it: the config, and the version of the change
/// that wrote it (so a replica sharing the file can tell another replica's write from an
/// operator's edit). A file written by hand needs no version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    #[serde(rename = "P", deserialize_with = "crate::json::whole_number")]
    p: u8,
    #[serde(default)]
    mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

impl RoutingFile {
    fn parse(text: &str) -> Result<RoutingFile, String> {
        let file: RoutingFile =
            serde_json::from_str(text).map_err(|e| format!("not a routing config ({e})"))?;
        file.config().validate()?;
        Ok(file)
    }

    fn config(&self) -> RoutingConfig {
        RoutingConfig {
            p: self.p,
            mode: self.mode,
        }
    }
}

/// What a look at the routing file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// The file holds a new config, written by hand (`version: None`) or by the edge
    /// that changed it. Nothing is applied yet: the caller decides.
    Changed {
        config: RoutingConfig,
        version: Option<String>,
    },
    /// The file changed but does not parse; the last good config stays.
    Rejected,
}

/// The live routing config, shared by every request (read without locks) and changed by
/// the file watcher and the admin API.
pub struct Routing {
    /// [`RoutingConfig::pack`]ed.
    dial: AtomicU16,
    file: PathBuf,
    /// Serializes changes, so the file and memory never disagree for long; holds the
    /// file's text as last read or written.
    writer: Mutex<Option<String>>,
    p_gauge: Gauge,
    rejections: Counter,
}

impl Routing {
    /// Reads the routing file and registers the dial's metrics. A missing file means the
    /// defaults (P = 100); a file that cannot be read or parsed is an error (at start-up
    /// there is no last good value).
    pub fn load(file: &Path, registry: &mut Registry) -> Result<Routing, String> {
        let (config, seen) = match std::fs::read_to_string(file) {
            Ok(text) => (
                RoutingFile::parse(&text)
                    .map_err(|e| format!("{}: {e}", file.display()))?
                    .config(),
                Some(text),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (RoutingConfig::default(), None),
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        let routing = Routing {
            dial: AtomicU16::new(config.pack()),
            file: file.to_owned(),
            writer: Mutex::new(seen),
            p_gauge: Gauge::default(),
            rejections: Counter::default(),
        };
        routing.p_gauge.set(i64::from(config.p));
        registry.register(
            "routing_p",
            "Percent of user traffic routed to user-svc v1",
            routing.p_gauge.clone(),
        );
        registry.register(
            "routing_file_rejections",
            "Changes of the routing file that did not parse and were ignored",
            routing.rejections.clone(),
        );
        Ok(routing)
    }

    pub fn current(&self) -> RoutingConfig {
        RoutingConfig::unpack(self.dial.load(Ordering::Relaxed))
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Applies `config` to requests from now on (not to the file).
    pub fn store(&self, config: RoutingConfig) {
        self.dial.store(config.pack(), Ordering::Relaxed);
        self.p_gauge.set(i64::from(config.p));
    }

    /// Applies `config` now and writes it, with the version of the change, to the
    /// routing file atomically (a temporary file in the same directory, renamed over
    /// it), so a restart keeps it.
    pub async fn set(&self, config: RoutingConfig, version: &str) -> Result<(), String> {
        config.validate()?;
        let mut seen = self.writer.lock().await;
        let file = RoutingFile {
            p: config.p,
            mode: config.mode,
            version: Some(version.to_owned()),
        };
        let text = serde_json::to_string_pretty(&file).expect("a config always serializes") + "\n";
        let file = self.file.clone();
        let written = text.clone();
        tokio::task::spawn_blocking(move || write_atomically(&file, &written))
            .await
            .map_err(|e| e.to_string())??;
        self.store(config);
        *seen = Some(text);
        Ok(())
    }

    /// Re-reads the file if its content changed, and says what it holds. A file that
    /// does not parse is logged and counted, and changes nothing.
    pub async fn reload(&self) -> Reload {
        let text = match tokio::fs::read_to_string(&self.file).await {
            Ok(text) => text,
            // Deleted or unreadable: keep what we have; the next good write wins.
            Err(_) => return Reload::Unchanged,
        };
        let mut seen = self.writer.lock().await;
        if seen.as_deref() == Some(text.as_str()) {
            return Reload::Unchanged;
        }
        let outcome = match RoutingFile::parse(&text) {
            Ok(file) => Reload::Changed {
                config: file.config(),
                version: file.version,
            },
            Err(e) => {
                let kept = self.current();
                self.rejections.inc();
                tracing::warn!(file = %self.file.display(), error = %e, kept_p = kept.p, "invalid routing file ignored; keeping the last good config");
                Reload::Rejected
            }
        };
        *seen = Some(text);
        outcome
    }
}

pub(crate) fn write_atomically(file: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("cannot write next to {}: {e}", file.display()))?;
    temp.write_all(text.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    temp.persist(file)
        .map_err(|e| format!("cannot replace {}: {e}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(p: u8) -> RoutingConfig {
        RoutingConfig {
            p,
            mode: Mode::Sticky,
        }
    }

    #[test]
    fn the_ends_of_the_dial_send_everything_one_way() {
        for id in ["a", "b", "8eab397f-6890-4c61-b3f8-4f6c099e4c90"] {
            assert_eq!(choose(sticky(100), Some(id)), Flavor::V1);
            assert_eq!(choose(sticky(0), Some(id)), Flavor::V2);
        }
        assert_eq!(choose(sticky(100), None), Flavor::V1);
        assert_eq!(choose(sticky(0), None), Flavor::V2);
    }

    #[test]
    fn lowering_p_only_moves_users_from_v1_to_v2() {
        let ids: Vec<String> = (0..2000)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        for p in (1..=100).rev() {
            for id in &ids {
                if choose(sticky(p - 1), Some(id)) == Flavor::V1 {
                    assert_eq!(
                        choose(sticky(p), Some(id)),
                        Flavor::V1,
                        "{id} moved back at P={p}"
                    );
                }
            }
        }
    }

    #[test]
    fn buckets_ignore_case_and_spread_evenly() {
        assert_eq!(bucket("ABC-def"), bucket("abc-DEF"));
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[bucket(&uuid::Uuid::new_v4().to_string()) as usize] += 1;
        }
        // 1000 expected per bucket; 5 standard deviations is about ±160.
        assert!(
            counts.iter().all(|&c| (840..=1160).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn config_files_parse_or_say_why() {
        assert_eq!(RoutingConfig::parse(r#"{"P": 70}"#), Ok(sticky(70)));
        assert_eq!(
            RoutingConfig::parse(r#"{"P": 5, "mode": "random"}"#).map(|c| c.mode),
            Ok(Mode::Random)
        );
        for bad in [r#"{"P": 101}"#, r#"{"P": -1}"#, r#"{"p": 5}"#, "70", "{"] {
            assert!(RoutingConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn p_and_mode_travel_together() {
        for p in [0, 1, 50, 99, 100] {
            for mode in [Mode::Sticky, Mode::Random] {
                let config = RoutingConfig { p, mode };
                assert_eq!(RoutingConfig::unpack(config.pack()), config);
            }
        }
    }

    #[tokio::test]
    async fn changes_persist_and_bad_files_keep_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routing.json");
        let mut registry = Registry::default();
        let routing = Routing::load(&file, &mut registry).unwrap();
        assert_eq!(routing.current(), RoutingConfig::default());

        routing.set(sticky(30), "v-1").await.unwrap();
        assert_eq!(routing.p_gauge.get(), 30);
        assert_eq!(
            Routing::load(&file, &mut Registry::default())
                .unwrap()
                .current(),
            sticky(30)
        );

        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains(r#""version": "v-1""#)
        );
        assert_eq!(routing.reload().await, Reload::Unchanged, "its own write");

        std::fs::write(&file, r#"{"P": 55}"#).unwrap();
        assert_eq!(
            routing.reload().await,
            Reload::Changed {
                config: sticky(55),
                version: None
            }
        );
        assert_eq!(
            routing.current().p,
            30,
            "reloading applies nothing by itself"
        );
        assert_eq!(routing.reload().await, Reload::Unchanged);
        routing.store(sticky(55));
        std::fs::write(&file, r#"{"P": "lots"}"#).unwrap();
        assert_eq!(routing.reload().await, Reload::Rejected);
        assert_eq!(routing.current().p, 55);
        assert_eq!(routing.rejections.get(), 1);
        assert!(
            Routing::load(&file, &mut Registry::default()).is_err(),
            "a bad file at start-up is an error"
        );
    }
}
