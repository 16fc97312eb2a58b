//! The embedded store: one SQLite file per service in WAL mode, so user-svc v1 and v2 can
//! share a file and see each other's writes. rusqlite is synchronous, so every call runs
//! on tokio's blocking pool, never on the async workers.

use std::path::Path;
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, TransactionBehavior};

pub type Pool = r2d2::Pool<SqliteConnectionManager>;

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("sqlite connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("sqlite task did not finish: {0}")]
    Task(String),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

impl SqliteError {
    /// Whether trying again later may succeed: the pool or the file was busy (another
    /// process held the write lock past the busy timeout), or a worker thread was lost.
    /// Anything else is a bug or a damaged file.
    pub fn is_transient(&self) -> bool {
        match self {
            SqliteError::Sql(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            SqliteError::Pool(_) | SqliteError::Task(_) | SqliteError::Dir { .. } => true,
        }
    }
}

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
/// `migrations[i]` moves the schema from version `i` to `i + 1`.
pub fn open(path: &Path, migrations: &[&str]) -> Result<Pool, SqliteError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| SqliteError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let manager = SqliteConnectionManager::file(path).with_init(|conn| {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers never block the writer, and two processes can share the file.
        // synchronous=FULL: a change the API acknowledged survives a power cut, not only a
        // crash; the outbox promise depends on it.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;",
        )
    });
    let pool = r2d2::Pool::builder()
        .max_size(8)
        .min_idle(Some(1))
        .connection_timeout(BUSY_TIMEOUT)
        .build(manager)?;
    let mut conn = pool.get()?;
    migrate(&mut conn, migrations)?;
    Ok(pool)
}

/// Applies the migrations this file lacks, under a write lock, so two processes starting
/// together (v1 and v2) cannot both apply one.
fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), SqliteError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let current = usize::try_from(current).unwrap_or(0);
    for (version, sql) in migrations.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))?;
    }
    tx.commit()?;
    Ok(())
}

/// Runs `work` with a pooled connection on the blocking thread pool.
pub async fn run<T, E, F>(pool: &Pool, work: F) -> Result<T, E>
where
    F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<SqliteError> + Send + 'static,
{
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = pool.get().map_err(SqliteError::from)?;
        work(&mut conn)
    })
    .await
    .map_err(|e| E::from(SqliteError::Task(e.to_string())))?
}

/// Whether an error is SQLite refusing a row for a UNIQUE or PRIMARY KEY constraint.
pub fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::ConstraintViolation
                && matches!(
                    e.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/db.sqlite");
        let migrations = [
            "CREATE TABLE t (x INTEGER PRIMARY KEY)",
            "ALTER TABLE t ADD y",
        ];
        open(&path, &migrations).unwrap();
        // A second open (another process, or a restart) finds nothing to do.
        let pool = open(&path, &migrations).unwrap();
        let conn = pool.get().unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn unique_violations_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(
            &dir.path().join("db.sqlite"),
            &["CREATE TABLE t (x TEXT UNIQUE)"],
        )
        .unwrap();
        let conn = pool.get().unwrap();
        conn.execute("INSERT INTO t VALUES ('a')", []).unwrap();
        let err = conn.execute("INSERT INTO t VALUES ('a')", []).unwrap_err();
        assert!(is_unique_violation(&err));
    }
}
