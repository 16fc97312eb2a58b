//! Helpers for tandem's own tests (feature `testing`; never in a release build).

/// MongoDB test cases take this lock so they run one at a time. The MongoDB-wire test
/// server detects transaction conflicts engine-wide (any write anywhere during a
/// transaction fails its commit), so cases running side by side, even in separate
/// databases, would fail each other's transactions; real MongoDB detects conflicts per
/// document.
pub static MONGO_ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `MONGO_URI` with a fresh database `<prefix>_<random>` in its path, or `None` (with a
/// note on stderr) when the variable is unset.
pub fn mongo_uri(prefix: &str) -> Option<String> {
    let Ok(uri) = std::env::var("MONGO_URI") else {
        eprintln!("skipped: MONGO_URI is not set, so this MongoDB case did not run");
        return None;
    };
    let db = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    Some(with_database(&uri, &db))
}

/// Puts `db` in the path of a MongoDB URI, keeping its options.
fn with_database(uri: &str, db: &str) -> String {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{}/{db}{query}", &base[..host_end])
}

/// Generates the contract cases for two stores: `sqlite::<case>` always, and
/// `mongo::<case>` (one at a time, skipped without MONGO_URI). `$sqlite` and `$mongo` are
/// async fns returning `(store, guard)` and `Option<store>`.
#[macro_export]
macro_rules! store_contract {
    (sqlite: $sqlite:path, mongo: $mongo:path, cases: [$($case:ident),* $(,)?]) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _guard) = $sqlite().await;
                    super::$case(store).await;
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let _one_at_a_time = $crate::testing::MONGO_ONE_AT_A_TIME.lock().await;
                    if let Some(store) = $mongo().await {
                        super::$case(store).await;
                    }
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_goes_into_the_path() {
        assert_eq!(
            super::with_database("mongodb://h:1/?replicaSet=rs0", "x"),
            "mongodb://h:1/x?replicaSet=rs0"
        );
        assert_eq!(
            super::with_database("mongodb://u:p@h:1/old", "x"),
            "mongodb://u:p@h:1/x"
        );
    }
}
