//! The embedded store: one SQLite file per service in WAL mode, so user-svc v1 and v2 can
//! share a file and see each other's writes. rusqlite is synchronous, so every call runs
//! on tokio's blocking pool, never on the async workers.

use std::path::Path;
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, TransactionBehavior};

pub type Pool = r2d2::Pool<SqliteConnectionManager>;

/// One SQLite database: a pool of connections for reads, and writes taken one at a time.
/// SQLite has a single writer; writers of one process queue here (an async queue, in
/// order) instead of sleeping in SQLite's busy handler, whose growing naps gave p99
/// write latencies near a second under 16 concurrent writers (measured). The busy
/// timeout still covers the other process on a shared file (user-svc v1 and v2).
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Database {
    /// Runs `work` (reads only) with a pooled connection on the blocking thread pool.
    pub async fn read<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
    {
        run(&self.pool, work).await
    }

    /// Runs `work`, which may write, once no other write of this process is running.
    pub async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
    {
        let turn = self.writer.clone().lock_owned().await;
        let result = run(&self.pool, work).await;
        drop(turn);
        result
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

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
const BUSY_RETRY: Duration = Duration::from_micros(500);

/// SQLite's busy handler: `attempt` counts from 0; `false` gives up (SQLITE_BUSY).
fn retry_soon(attempt: i32) -> bool {
    if BUSY_RETRY * attempt.max(0) as u32 >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_RETRY);
    true
}

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
/// `migrations[i]` moves the schema from version `i` to `i + 1`.
///
/// Opening connects, and migrating may wait for another process's write lock (v1 and v2
/// start together on one file), in SQLite's busy handler, which sleeps its thread: so all
/// of it runs on tokio's blocking pool, never on an async worker.
pub async fn open(
    path: &Path,
    migrations: &'static [&'static str],
) -> Result<Database, SqliteError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || open_blocking(&path, migrations))
        .await
        .map_err(|e| SqliteError::Task(e.to_string()))?
}

fn open_blocking(path: &Path, migrations: &[&str]) -> Result<Database, SqliteError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| SqliteError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let manager = SqliteConnectionManager::file(path).with_init(|conn| {
        // While another process holds the write lock, retry every half millisecond (up to
        // BUSY_TIMEOUT): SQLite's own busy timeout naps 1, 2, 5 … 100 ms between tries,
        // which leaves the lock idle for most of those naps when two processes share
        // the file (measured: POST /users p99 133 ms with it under 16 connections).
        conn.busy_handler(Some(retry_soon))?;
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
    drop(conn);
    Ok(Database {
        pool,
        writer: Default::default(),
    })
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
async fn run<T, E, F>(pool: &Pool, work: F) -> Result<T, E>
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

    const MIGRATIONS: &[&str] = &[
        "CREATE TABLE t (x INTEGER PRIMARY KEY)",
        "ALTER TABLE t ADD y",
    ];

    #[tokio::test]
    async fn migrations_run_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/db.sqlite");
        open(&path, MIGRATIONS).await.unwrap();
        // A second open (another process, or a restart) finds nothing to do.
        let db = open(&path, MIGRATIONS).await.unwrap();
        let conn = db.pool().get().unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn unique_violations_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(
            &dir.path().join("db.sqlite"),
            &["CREATE TABLE t (x TEXT UNIQUE)"],
        )
        .await
        .unwrap();
        let conn = db.pool().get().unwrap();
        conn.execute("INSERT INTO t VALUES ('a')", []).unwrap();
        let err = conn.execute("INSERT INTO t VALUES ('a')", []).unwrap_err();
        assert!(is_unique_violation(&err));
    }

    /// While another process holds the write lock, opening waits in SQLite's busy handler;
    /// the async runtime must go on meanwhile (here, a timer on a one-thread runtime).
    #[test]
    fn opening_a_locked_file_does_not_block_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(open(&path, MIGRATIONS)).unwrap();

        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = {
            let path = path.clone();
            std::thread::spawn(move || {
                let conn = Connection::open(path).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                locked.send(()).unwrap();
                // The other process's write: it holds the lock this long.
                std::thread::sleep(Duration::from_millis(300));
                conn.execute_batch("COMMIT").unwrap();
            })
        };
        is_locked.recv().unwrap();
        let ticks = runtime.block_on(async {
            let mut ticks = 0;
            let mut timer = tokio::time::interval(Duration::from_millis(10));
            let opening = open(&path, MIGRATIONS);
            tokio::pin!(opening);
            loop {
                tokio::select! {
                    opened = &mut opening => { opened.unwrap(); break ticks; }
                    _ = timer.tick() => ticks += 1,
                }
            }
        });
        holder.join().unwrap();
        assert!(
            ticks >= 10,
            "the runtime stood still while the file was locked ({ticks} ticks in ~300 ms)"
        );
    }
}
