//! The embedded store: one SQLite file per service in WAL mode, so user-svc v1 and v2 can
//! share a file and see each other's writes. rusqlite is synchronous, so every call runs
//! off tokio's async workers: reads on the database's few reader threads, writes on its
//! one writer thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

/// Most writes committed together in one transaction.
const MAX_GROUP: usize = 256;

/// Reader threads per database, each with its own connection.
///
/// Reads used to run on tokio's blocking pool with an r2d2 pool of 8 connections: under
/// 32 concurrent list calls up to 32 blocking threads took turns at 8 connections, each
/// thread with its own cold allocator heap and caches, and 34 % of order-svc's CPU went
/// to turning rows into orders, most of it in the allocator (perf, bench/FINDINGS.md
/// §9). A few long-lived threads, one connection each, keep both warm. Reads of a file
/// in the page cache are CPU work, so more threads than cores buy nothing; four leave
/// room for reads that wait on the disk.
const READERS: usize = 4;

/// One SQLite database: a few reader threads with a connection each, and one writer
/// thread that commits writes in groups.
///
/// SQLite has a single writer, and with `synchronous=FULL` every commit waits for an
/// fsync (about 0.5 ms on this class of disk): one commit per write capped a process
/// near 2,000 writes/s, and PUT /users at 460–500/s with the relay's commits in the
/// same queue (measured, bench/FINDINGS.md). So the writer takes every write that was
/// queued while the previous commit was being synced, runs each in a savepoint of one
/// transaction, and commits them with one fsync, as PostgreSQL's and MySQL's group
/// commit do. A write that fails rolls back to its savepoint and fails alone; its
/// group-mates commit. No write is answered before the commit that holds it is durable.
///
/// Writers of one process queue here in order instead of sleeping in SQLite's busy
/// handler; the busy handler still covers the other process on a shared file (user-svc
/// v1 and v2).
#[derive(Clone)]
pub struct Database {
    reads: crossbeam_channel::Sender<Read>,
    writes: mpsc::UnboundedSender<Box<dyn Write>>,
    stats: Arc<WriterStats>,
}

/// A read waiting for a reader thread; it answers its caller itself.
type Read = Box<dyn FnOnce(&mut Connection) + Send>;

/// What the writer has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Writes sent and not yet answered.
    pub queued: AtomicUsize,
    /// Writes answered (committed or failed).
    pub writes: AtomicU64,
    /// Transactions committed: writes / commits is the mean group size.
    pub commits: AtomicU64,
    /// Groups the writer has taken from the queue (committed, failed or under way).
    pub groups: AtomicU64,
}

impl Database {
    /// Runs `work` (reads only) on one of the reader threads, with its connection.
    pub async fn read<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
    {
        let (done, outcome) = oneshot::channel();
        let read: Read = Box::new(move |conn| {
            // The caller may have gone (a cancelled request); nothing to undo.
            let _ = done.send(work(conn));
        });
        if self.reads.send(read).is_err() {
            return Err(SqliteError::Task("the sqlite readers have stopped".into()).into());
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(SqliteError::Task("the read panicked".into()).into()))
    }

    /// Runs `work` inside a write transaction (an IMMEDIATE one: what it reads cannot go
    /// stale before it commits) and answers once that transaction is committed and
    /// synced. `work` must not begin or end transactions itself. If it fails, what it
    /// changed is rolled back and its error returned; other writes committed with it are
    /// unaffected.
    pub async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<SqliteError> + Send + 'static,
    {
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            work: Some(work),
            result: None,
            done,
        };
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.writes.send(Box::new(pending)).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(SqliteError::Task("the sqlite writer has stopped".into()).into());
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(SqliteError::Task("the write panicked".into()).into()))
    }

    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Adds the writer's figures to `registry`, read at each scrape: `sqlite_writes_total`
    /// and `sqlite_commits_total` (their ratio is the mean group size, the number of
    /// writes each fsync carried) and `sqlite_writes_queued`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(WriterMetrics(self.stats.clone())));
    }
}

/// [`WriterStats`] as Prometheus metrics.
#[derive(Debug)]
struct WriterMetrics(Arc<WriterStats>);

impl prometheus_client::collector::Collector for WriterMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let stats = &self.0;
        let counters = [
            (
                "sqlite_writes",
                "Writes the SQLite writer answered (committed or failed)",
                stats.writes.load(Ordering::Relaxed),
            ),
            (
                "sqlite_commits",
                "Transactions the SQLite writer committed; writes / commits is the mean group size",
                stats.commits.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let queued = ConstGauge::new(stats.queued.load(Ordering::Relaxed) as i64);
        queued.encode(encoder.encode_descriptor(
            "sqlite_writes_queued",
            "Writes waiting for the SQLite writer or in its current group",
            None,
            queued.metric_type(),
        )?)?;
        Ok(())
    }
}

/// A write waiting for the writer thread, with its caller's answer.
trait Write: Send {
    /// Runs the work inside the group's transaction; false when it failed (the writer
    /// then rolls back to the savepoint it ran in).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the group's commit succeeded or failed.
    fn settle(self: Box<Self>, commit: Result<(), &SqliteError>);
}

struct Pending<T, E, F> {
    work: Option<F>,
    result: Option<Result<T, E>>,
    done: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Write for Pending<T, E, F>
where
    F: FnOnce(&Connection) -> Result<T, E> + Send,
    T: Send,
    E: From<SqliteError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn settle(self: Box<Self>, commit: Result<(), &SqliteError>) {
        let answer = match (self.result, commit) {
            // Its own failure, whatever became of the others.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(value)), Ok(())) => Ok(value),
            // Done, or never reached, but the group did not commit: nothing of it stays.
            (_, Err(e)) => Err(e.duplicate().into()),
            (None, Ok(())) => Err(SqliteError::Task("the write panicked".into()).into()),
        };
        // The caller may have gone (a cancelled request); the write stands regardless.
        let _ = self.done.send(answer);
    }
}

/// A reader thread: one connection, one read at a time, until the database is dropped.
fn serve_reads(mut conn: Connection, reads: crossbeam_channel::Receiver<Read>) {
    for read in reads {
        // A panicking read fails alone (its caller hears "the read panicked"); the
        // thread and its connection carry on. A read holds no transaction open.
        let _ = catch_unwind(AssertUnwindSafe(|| read(&mut conn)));
    }
}

/// The writer thread: one connection, one group of writes per transaction.
fn write_groups(
    conn: Connection,
    mut writes: mpsc::UnboundedReceiver<Box<dyn Write>>,
    stats: Arc<WriterStats>,
) {
    while let Some(first) = writes.blocking_recv() {
        // The rest of the group is taken once BEGIN holds the file's lock (commit_group),
        // so writes queued while it waited for another process join too.
        let mut group = Vec::with_capacity(16);
        group.push(first);
        stats.groups.fetch_add(1, Ordering::Relaxed);
        let committed = commit_group(&conn, &mut group, &mut writes);
        if committed.is_err() && !conn.is_autocommit() {
            // Best effort: if even this fails the connection is broken and the next
            // BEGIN says so to the next group.
            let _ = conn.execute_batch("ROLLBACK");
        }
        if committed.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        // Counted before the answers go out: a caller that has its answer sees its write
        // in the figures (a test read them between the last answer and the count, once).
        stats
            .writes
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        stats.queued.fetch_sub(group.len(), Ordering::Relaxed);
        for write in group {
            write.settle(committed.as_ref().map(|_| ()));
        }
    }
}

/// Moves the writes waiting in the queue into `group`, up to [`MAX_GROUP`].
fn take_queued(
    writes: &mut mpsc::UnboundedReceiver<Box<dyn Write>>,
    group: &mut Vec<Box<dyn Write>>,
) {
    while group.len() < MAX_GROUP {
        match writes.try_recv() {
            Ok(write) => group.push(write),
            Err(_) => break,
        }
    }
}

fn commit_group(
    conn: &Connection,
    group: &mut Vec<Box<dyn Write>>,
    writes: &mut mpsc::UnboundedReceiver<Box<dyn Write>>,
) -> Result<(), SqliteError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    // BEGIN may have waited for the file's lock while the other process sharing the file
    // (user-svc v1 and v2) committed; what was queued meanwhile joins this group rather
    // than wait for the next. Without this, two processes on one file each committed
    // groups half the size one process did, at the same commits per second: PUT /users
    // at 2,485/s against 5,611/s with every write in one process (bench/FINDINGS.md §9).
    take_queued(writes, group);
    for write in group.iter_mut() {
        conn.execute_batch("SAVEPOINT write")?;
        // A panicking write fails alone, like one that returned an error; the thread, and
        // the writes after it, carry on.
        let ok = catch_unwind(AssertUnwindSafe(|| write.run(conn))).unwrap_or(false);
        if ok {
            conn.execute_batch("RELEASE write")?;
        } else {
            conn.execute_batch("ROLLBACK TO write; RELEASE write")?;
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
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
    /// The same failure for another caller (a failed group commit fails every write in
    /// it); rusqlite's errors are not Clone.
    fn duplicate(&self) -> SqliteError {
        match self {
            SqliteError::Sql(rusqlite::Error::SqliteFailure(code, message)) => {
                SqliteError::Sql(rusqlite::Error::SqliteFailure(*code, message.clone()))
            }
            other => SqliteError::Task(other.to_string()),
        }
    }

    /// Whether trying again later may succeed: the file was busy (another process held
    /// the write lock past the busy timeout), or a worker thread was lost.
    /// Anything else is a bug or a damaged file.
    pub fn is_transient(&self) -> bool {
        match self {
            SqliteError::Sql(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            SqliteError::Task(_) | SqliteError::Dir { .. } => true,
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
    let mut writer = connect(path)?;
    migrate(&mut writer, migrations)?;
    let (reads, read_queue) = crossbeam_channel::unbounded();
    for _ in 0..READERS {
        let conn = connect(path)?;
        let read_queue = read_queue.clone();
        std::thread::Builder::new()
            .name("sqlite-reader".into())
            .spawn(move || serve_reads(conn, read_queue))
            .map_err(|e| SqliteError::Task(format!("cannot start a reader thread: {e}")))?;
    }
    let (writes, queued) = mpsc::unbounded_channel();
    let stats = Arc::new(WriterStats::default());
    // The threads end when the last Database clone is dropped (the queues close).
    let writer_stats = stats.clone();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || write_groups(writer, queued, writer_stats))
        .map_err(|e| SqliteError::Task(format!("cannot start the writer thread: {e}")))?;
    Ok(Database {
        reads,
        writes,
        stats,
    })
}

/// A connection to the file at `path`, set up the way every connection of tandem is.
fn connect(path: &Path) -> Result<Connection, SqliteError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            // Each connection stays on its own thread; SQLite's per-connection mutex
            // would only cost.
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // While another process holds the write lock, retry every half millisecond (up to
    // BUSY_TIMEOUT): SQLite's own busy timeout naps 1, 2, 5 … 100 ms between tries,
    // which leaves the lock idle for most of those naps when two processes share the
    // file (measured: POST /users p99 133 ms with it under 16 connections).
    conn.busy_handler(Some(retry_soon))?;
    // Plans are made without looking at bound values (the query planner stability
    // guarantee). Without it, the bundled SQLite (built with STAT4) marks a statement
    // whose plan could depend on a parameter, such as `LIMIT ?`, as expired each time
    // that parameter is bound, and prepares it again on its next step: 137 k
    // instructions of every page of orders, 10 % of order-svc's (callgrind,
    // bench/FINDINGS.md §9). tandem never runs ANALYZE, so no plan gains from them.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // WAL: readers never block the writer, and two processes can share the file.
    // synchronous=FULL: a change the API acknowledged survives a power cut, not only a
    // crash; the outbox promise depends on it.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
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
        let (version, mode): (i64, String) = db
            .read(|conn| {
                Ok::<_, SqliteError>((
                    conn.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!((version, mode.as_str()), (2, "wal"));
    }

    /// Writes queued behind a running commit are committed together, and one that fails
    /// (a unique violation, a panic) fails alone: its group-mates commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_commit_together_and_a_failing_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(
            &dir.path().join("db.sqlite"),
            &["CREATE TABLE t (x INTEGER UNIQUE)"],
        )
        .await
        .unwrap();
        // The first write holds the writer until every other write is queued.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(move |tx| {
                    held.recv().unwrap();
                    tx.execute("INSERT INTO t VALUES (-1)", [])?;
                    Ok::<_, SqliteError>(())
                })
                .await
            }
        });
        let mut writes = Vec::new();
        // 0..20, with 7 written twice (the second is refused) and one write that panics.
        for x in (0..20).chain([7]) {
            let db = db.clone();
            writes.push(tokio::spawn(async move {
                db.write(move |tx| {
                    tx.execute("INSERT INTO t VALUES (?1)", [x])?;
                    Ok::<_, SqliteError>(x)
                })
                .await
            }));
        }
        let panicking = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(|tx| -> Result<(), SqliteError> {
                    tx.execute("INSERT INTO t VALUES (1000)", [])?;
                    panic!("a bug in one write");
                })
                .await
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.writer_stats().queued.load(Ordering::Relaxed) < 23 {
            assert!(
                std::time::Instant::now() < deadline,
                "the writes never queued"
            );
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let mut refused = Vec::new();
        for write in writes {
            if let Err(SqliteError::Sql(e)) = write.await.unwrap() {
                assert!(is_unique_violation(&e), "{e}");
                refused.push(e);
            }
        }
        assert_eq!(refused.len(), 1, "exactly the second 7 is refused");
        let panicked = panicking.await.unwrap().unwrap_err();
        assert!(panicked.to_string().contains("panicked"), "{panicked}");
        let stored: Vec<i64> = db
            .read(|conn| {
                let mut select = conn.prepare("SELECT x FROM t ORDER BY x")?;
                let rows = select.query_map([], |r| r.get(0))?;
                Ok::<_, SqliteError>(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(stored, (-1..20).collect::<Vec<_>>(), "1000 was rolled back");
        // The first write's group, and at most one more for those queued behind it (some
        // may have joined the first group, queued before the writer took it).
        let commits = db.writer_stats().commits.load(Ordering::Relaxed);
        assert!(commits <= 2, "23 writes took {commits} commits");
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
        let insert = || {
            db.write(|tx| {
                tx.execute("INSERT INTO t VALUES ('a')", [])?;
                Ok::<_, SqliteError>(())
            })
        };
        insert().await.unwrap();
        match insert().await {
            Err(SqliteError::Sql(e)) => assert!(is_unique_violation(&e), "{e}"),
            other => panic!("the second insert: {other:?}"),
        }
    }

    /// Writes queued while the writer waits for the file's lock (another process on the
    /// file is committing) join the group that waits, not the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_while_the_file_is_locked_join_the_waiting_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = open(&path, &["CREATE TABLE t (x INTEGER)"]).await.unwrap();
        // The other process: it holds the write lock until told to commit.
        let other = connect(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let write = |x: i64| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |tx| {
                    tx.execute("INSERT INTO t VALUES (?1)", [x])?;
                    Ok::<_, SqliteError>(())
                })
                .await
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        let until = |done: &dyn Fn() -> bool| {
            while !done() {
                assert!(std::time::Instant::now() < deadline, "timed out");
                std::thread::yield_now();
            }
        };
        let first = write(0);
        // The writer has taken the first write and waits in BEGIN for the lock.
        until(&|| db.writer_stats().groups.load(Ordering::Relaxed) == 1);
        let rest: Vec<_> = (1..10).map(write).collect();
        until(&|| db.writer_stats().queued.load(Ordering::Relaxed) == 10);
        other.execute_batch("COMMIT").unwrap();
        first.await.unwrap().unwrap();
        for w in rest {
            w.await.unwrap().unwrap();
        }
        let stats = db.writer_stats();
        assert_eq!(
            (
                stats.writes.load(Ordering::Relaxed),
                stats.commits.load(Ordering::Relaxed)
            ),
            (10, 1),
            "the nine queued behind the lock joined the first write's commit"
        );
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
