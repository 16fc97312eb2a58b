//! The system under test: the release binaries, started as real processes on free ports
//! over a fresh data directory (as scripts/start runs them), with RabbitMQ names of their
//! own so a benchmark never mixes with anything else on the broker.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tandem_messaging::amqp::Topology;
use tandem_testkit::{Proc, bin, eventually, free_port, remove_topology, wait_serving};

pub struct Stack {
    /// Held so the data directory lives as long as the stack.
    _dir: tempfile::TempDir,
    procs: Vec<Proc>,
    pub user_v1: String,
    pub orders: String,
    /// http://127.0.0.1:PORT of the edge.
    pub edge: String,
    pub worker_ops: Option<String>,
    topology: Topology,
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The processes first, or a relay or worker would declare the topology again.
        self.procs.clear();
        // The services were started with the environment's AMQP_URL, or their default.
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| tandem_messaging::amqp::DEFAULT_AMQP_URL.to_owned());
        remove_topology(&url, &self.topology);
    }
}

pub struct Options {
    /// Percent of user traffic the edge sends to v1.
    pub p: u8,
    /// Start the sync worker too.
    pub sync: bool,
    /// Serve orders from this SQLite file instead of a fresh one.
    pub order_db: Option<PathBuf>,
    /// Pin the edge to one CPU and every other process (this one included) to another.
    pub pin: Option<Pinning>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Pinning {
    pub edge_cpu: usize,
    pub others_cpu: usize,
}

impl Options {
    pub fn new(p: u8) -> Options {
        Options {
            p,
            sync: false,
            order_db: None,
            pin: None,
        }
    }
}

/// Pins the calling process (the load generator) to `cpu`.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

impl Stack {
    /// An HTTP client for load against the edge, keeping enough idle connections that an
    /// open-loop schedule does not reconnect.
    pub fn http_client() -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?)
    }

    /// Creates a user through the edge and returns its id.
    pub async fn create_user(
        &self,
        http: &reqwest::Client,
        email: &str,
        delivery_address: serde_json::Value,
    ) -> anyhow::Result<String> {
        let body = serde_json::json!({"emails": [email], "deliveryAddress": delivery_address});
        let reply: serde_json::Value = http
            .post(format!("{}/users", self.edge))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        reply["user"]["userId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("creating a user failed: {reply}"))
    }

    pub async fn start(options: Options) -> anyhow::Result<Stack> {
        let dir = tempfile::tempdir()?;
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let (v1, v2, orders, edge) = (
            addr(free_port()),
            addr(free_port()),
            addr(free_port()),
            addr(free_port()),
        );
        let topology = Topology::prefixed(&format!("bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            dir.path().join("routing.json"),
            format!(r#"{{"P": {}}}"#, options.p),
        )?;
        let common = [
            ("RUST_LOG", "warn".to_owned()),
            ("AMQP_EXCHANGE", topology.exchange.clone()),
            ("AMQP_QUEUE", topology.queue.clone()),
            ("AMQP_DEAD_LETTER", topology.dead_letter.clone()),
        ];
        let mut procs = Vec::new();
        let pin = options.pin;
        let mut start = |name: &str, binary: &str, env: Vec<(&str, String)>| {
            let cpu = pin.map(|p| {
                if binary == "edge" {
                    p.edge_cpu
                } else {
                    p.others_cpu
                }
            });
            let mut command = match cpu {
                Some(cpu) => {
                    let mut c = Command::new("taskset");
                    c.args(["-c", &cpu.to_string()]).arg(bin(binary));
                    c
                }
                None => Command::new(bin(binary)),
            };
            command
                .current_dir(dir.path())
                .envs(common.iter().cloned())
                .envs(env);
            procs.push(Proc::start(name, &mut command, dir.path()));
        };
        let ops = || addr(free_port());
        for (name, flavor, listen) in [("user-v1", "v1", &v1), ("user-v2", "v2", &v2)] {
            start(
                name,
                "user-svc",
                vec![
                    ("USER_SVC_FLAVOR", flavor.to_owned()),
                    ("USER_SVC_LISTEN", listen.clone()),
                    ("USER_SVC_OPS_LISTEN", ops()),
                ],
            );
        }
        let mut order_env = vec![
            ("ORDER_SVC_LISTEN", orders.clone()),
            ("ORDER_SVC_OPS_LISTEN", ops()),
        ];
        if let Some(db) = &options.order_db {
            order_env.push(("ORDER_STORE_URL", format!("sqlite://{}", db.display())));
        }
        start("order-svc", "order-svc", order_env);
        let worker_ops = options.sync.then(ops);
        if let Some(worker_ops) = &worker_ops {
            start(
                "sync-worker",
                "sync-worker",
                vec![
                    ("ORDER_SVC_URL", format!("http://{orders}")),
                    ("SYNC_WORKER_OPS_LISTEN", worker_ops.clone()),
                ],
            );
        }
        start(
            "edge",
            "edge",
            vec![
                ("EDGE_LISTEN", edge.clone()),
                ("USER_V1_URL", format!("http://{v1}")),
                ("USER_V2_URL", format!("http://{v2}")),
                ("ORDER_SVC_URL", format!("http://{orders}")),
                ("ROUTING_CONFIG", "routing.json".to_owned()),
            ],
        );
        for a in [&v1, &v2, &orders] {
            wait_serving(a, Duration::from_secs(60)).await;
        }
        let edge = format!("http://{edge}");
        let health = format!("{edge}/health");
        eventually(Duration::from_secs(30), "the edge to be healthy", || {
            let health = health.clone();
            async move {
                let reply = reqwest::get(&health).await.ok()?;
                reply.status().is_success().then_some(())
            }
        })
        .await;
        if let Some(worker_ops) = &worker_ops {
            let ready = format!("http://{worker_ops}/healthz");
            eventually(
                Duration::from_secs(30),
                "the sync worker to consume",
                || {
                    let ready = ready.clone();
                    async move {
                        let reply = reqwest::get(&ready).await.ok()?;
                        reply.status().is_success().then_some(())
                    }
                },
            )
            .await;
        }
        Ok(Stack {
            _dir: dir,
            procs,
            user_v1: v1,
            orders,
            edge,
            worker_ops,
            topology,
        })
    }

    /// Resident memory of each process, in MiB.
    pub fn memory_mib(&self) -> Vec<(String, f64)> {
        self.procs
            .iter()
            .map(|p| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id()))
                    .unwrap_or_default();
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                (p.name.clone(), (kib / 1024.0 * 10.0).round() / 10.0)
            })
            .collect()
    }

    /// CPU time (user + system) each process has used so far, in seconds, with the
    /// load generator itself as "load generator".
    pub fn cpu_seconds(&self) -> Vec<(String, f64)> {
        let mut all: Vec<(String, f64)> = self
            .procs
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    cpu_seconds(&format!("/proc/{}/stat", p.child.id())),
                )
            })
            .collect();
        all.push(("load generator".to_owned(), cpu_seconds("/proc/self/stat")));
        all
    }
}

/// utime + stime of a /proc/PID/stat file, in seconds (Linux clock ticks are 1/100 s).
fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
