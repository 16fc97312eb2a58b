//! Helpers for tandem's own tests and benchmarks (feature `testing`; never in a service
//! build): MongoDB test databases, the store contract harness, child processes, and
//! polling with a deadline instead of sleeping.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
                    let _one_at_a_time = $crate::MONGO_ONE_AT_A_TIME.lock().await;
                    if let Some(store) = $mongo().await {
                        super::$case(store).await;
                    }
                }
            )*
        }
    };
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A binary of this workspace, built in the same profile as the running executable
/// (next to it, or next to its `deps/` directory for test executables).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let dir = exe.parent().expect("an executable lives in a directory");
    let candidates = [
        dir.join(name),
        dir.parent().map(|d| d.join(name)).unwrap_or_default(),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is not built next to {}: build the workspace first (cargo build --workspace)",
                exe.display()
            )
        })
}

/// A port nobody listens on right now (the OS may, rarely, hand it out again before the
/// process under test binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free port")
}

/// A child process with its output in a log file; killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn start(name: &str, command: &mut Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("the log file can be created");
        let child = command
            .stdout(Stdio::from(file.try_clone().expect("a log file handle")))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(self.pid(), signal);
    }

    /// Sends SIGTERM and waits for the exit status (panics after `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(timeout).await
    }

    /// Sends SIGKILL, as a crash would, and waits until the process is gone.
    pub async fn kill(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait(Duration::from_secs(10)).await
    }

    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        eventually(timeout, &format!("{name} to exit"), || {
            let status = self.child.try_wait().expect("the child can be polled");
            async move { status }
        })
        .await
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a gRPC server at `addr` (host:port) answers its health check with SERVING.
pub async fn wait_serving(addr: &str, timeout: Duration) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let url = format!("http://{addr}");
    eventually(timeout, &format!("{addr} to serve"), || {
        let url = url.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(url)
                .ok()?
                .connect()
                .await
                .ok()?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .ok()?;
            (reply.into_inner().status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await
}

/// Deletes a test run's exchanges and queues, and whatever messages they still hold.
/// Every test and benchmark run declares a topology of its own, durable like production's;
/// without this each run left its queues behind, and a long-lived broker collected hundreds
/// of them. Call it after the processes that redeclare the topology have stopped. Blocking
/// (it runs on a thread of its own), so `Drop` can call it; best effort, with a note on
/// stderr when the broker cannot be reached.
pub fn remove_topology(amqp_url: &str, topology: &tandem_messaging::Topology) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let name = topology.queue.clone();
    let (url, topology) = (amqp_url.to_owned(), topology.clone());
    let removal = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let work = async {
                let connection = tandem_messaging::amqp::connect(&url, "tandem-test-cleanup")
                    .await
                    .map_err(|e| e.to_string())?;
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| e.to_string())?;
                for queue in [&topology.queue, &topology.dead_letter] {
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                for exchange in [&topology.exchange, &topology.dead_letter] {
                    channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let _ = connection.close(200, "cleaned up".into()).await;
                Ok::<(), String>(())
            };
            tokio::time::timeout(Duration::from_secs(15), work)
                .await
                .map_err(|_| "the broker did not answer within 15 s".to_owned())?
        })
    });
    match removal.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("could not remove test topology {name}: {e}"),
        Err(_) => eprintln!("removing test topology {name} panicked"),
    }
}

/// A TCP proxy that can cut the line: tests put it between a process and RabbitMQ (or
/// any server) to make that server vanish and come back without touching the real one,
/// which other tests share.
pub struct ChaosProxy {
    pub addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on a free local port and forwards to `target` while up.
    pub async fn start(target: std::net::SocketAddr) -> ChaosProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().expect("a bound address");
        let (up, watch) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !*watch.borrow() {
                    continue; // down: the connection is dropped at once
                }
                let mut down = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {} // cut: both sockets close
                    }
                });
            }
        });
        ChaosProxy { addr, up, task }
    }

    /// Cuts every connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    pub fn restore(&self) {
        let _ = self.up.send(true);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.up.send(false);
    }
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
