//! What user-svc and order-svc share about where they keep their data: the `--store` URL,
//! the embedded SQLite database (a pool, migrations, one writer at a time, all off the
//! async runtime) and the MongoDB helpers. Each service owns its own store trait and
//! schema.

pub mod mongo;
pub mod sqlite;

use std::path::PathBuf;
use std::str::FromStr;

use tandem_serving::telemetry::redact_url;

/// A parsed `--store` value: `sqlite://PATH` (relative, or absolute as `sqlite:///abs`)
/// or a MongoDB connection string.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Mongo(String),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "sqlite:// needs a file path, e.g. sqlite://data/user_db.sqlite".into(),
                );
            }
            Ok(StoreUrl::Sqlite(PathBuf::from(path)))
        } else if raw.starts_with("mongodb://") || raw.starts_with("mongodb+srv://") {
            Ok(StoreUrl::Mongo(raw.to_owned()))
        } else {
            Err(format!(
                "unsupported store URL {:?}: use sqlite://PATH or mongodb://HOST[:PORT]/",
                redact_url(raw)
            ))
        }
    }
}

/// Never prints a password.
impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Mongo(uri) => f.write_str(&redact_url(uri)),
        }
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_by_scheme() {
        assert_eq!(
            "sqlite://data/user_db.sqlite".parse(),
            Ok(StoreUrl::Sqlite("data/user_db.sqlite".into()))
        );
        assert_eq!(
            "sqlite:///var/lib/x.sqlite".parse(),
            Ok(StoreUrl::Sqlite("/var/lib/x.sqlite".into()))
        );
        assert!(matches!(
            "mongodb://m:27017/?replicaSet=rs0".parse(),
            Ok(StoreUrl::Mongo(_))
        ));
        assert!("postgres://x".parse::<StoreUrl>().is_err());
        assert!("sqlite://".parse::<StoreUrl>().is_err());
    }

    #[test]
    fn passwords_never_print() {
        let url: StoreUrl = "mongodb://admin:hunter2@db:27017/?authSource=admin"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "mongodb://admin:***@db:27017/?authSource=admin"
        );
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
