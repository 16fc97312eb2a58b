//! The store contract harness: one suite of cases, run against every store. SQLite cases
//! always run; MongoDB cases run where `MONGO_URI` is set and are reported as *ignored*
//! where it is not, so a run without MongoDB never shows them green.
//!
//! A contract test file sets `harness = false` and ends with [`store_contract!`], which
//! writes its `main` (libtest-mimic gives the usual test output, filters and flags).

use std::future::Future;

pub use libtest_mimic::{Arguments, Failed, Trial};

/// MongoDB cases take this lock so they run one at a time. The MongoDB-wire test server
/// detects transaction conflicts engine-wide (any write anywhere during a transaction
/// fails its commit), so cases running side by side, even in separate databases, would
/// fail each other's transactions; real MongoDB detects conflicts per document.
static MONGO_ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether the MongoDB cases can run here.
pub fn mongo_configured() -> bool {
    std::env::var_os("MONGO_URI").is_some()
}

/// `MONGO_URI` with a fresh database `<prefix>_<random>` in its path. A MongoDB case run
/// without it (with `--include-ignored`) fails, saying why.
pub fn mongo_uri(prefix: &str) -> String {
    let uri = std::env::var("MONGO_URI")
        .expect("MONGO_URI is not set: the MongoDB cases need a MongoDB to run against");
    let db = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    with_database(&uri, &db)
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

/// Runs one case on a runtime of its own (a panic fails the trial).
pub fn run_case(case: impl Future<Output = ()>) -> Result<(), Failed> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("no runtime: {e}")))?
        .block_on(case);
    Ok(())
}

/// [`run_case`], one MongoDB case at a time.
pub fn run_mongo_case(case: impl Future<Output = ()>) -> Result<(), Failed> {
    let _one_at_a_time = MONGO_ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    run_case(case)
}

/// Runs the trials as a test binary does and exits with its status.
pub fn main(trials: Vec<Trial>) -> std::process::ExitCode {
    if !mongo_configured() {
        eprintln!("MONGO_URI is not set: the MongoDB cases are ignored (see README)");
    }
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

/// Writes the `main` of a store contract test: `sqlite::<case>` always, and
/// `mongo::<case>` (one at a time; ignored without MONGO_URI). `$sqlite` and `$mongo`
/// are async fns returning `(store, guard)` and `store`; each case is an async fn taking
/// the store.
#[macro_export]
macro_rules! store_contract {
    (sqlite: $sqlite:path, mongo: $mongo:path, cases: [$($case:ident),* $(,)?]) => {
        fn main() -> std::process::ExitCode {
            use $crate::contract::{Trial, mongo_configured, run_case, run_mongo_case};
            let mut trials = Vec::new();
            $(
                trials.push(Trial::test(concat!("sqlite::", stringify!($case)), || {
                    run_case(async {
                        let (store, _guard) = $sqlite().await;
                        $case(store).await;
                    })
                }));
                trials.push(
                    Trial::test(concat!("mongo::", stringify!($case)), || {
                        run_mongo_case(async { $case($mongo().await).await })
                    })
                    .with_ignored_flag(!mongo_configured()),
                );
            )*
            $crate::contract::main(trials)
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
