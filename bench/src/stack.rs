//! The system under test: the release binaries, started as real processes by the test
//! kit's launcher (each on ports reserved for it, over a fresh data directory, with
//! RabbitMQ names of its own so a benchmark never mixes with anything else on the broker).

use std::path::PathBuf;

use tandem_testkit::{Service, StackBuilder};

pub use tandem_testkit::Pinning;

pub struct Stack {
    inner: tandem_testkit::Stack,
    /// host:port of user-svc v1 and of order-svc.
    pub user_v1: String,
    pub orders: String,
    /// http://127.0.0.1:PORT of the edge.
    pub edge: String,
    pub worker_ops: Option<String>,
    /// The ops ports of user-svc v1 and v2, where their outbox relays count.
    pub user_ops: Vec<String>,
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
    /// Flags of the edge's guard (`--jwks`, `--rate-limit`…).
    pub edge_args: Vec<String>,
}

impl Options {
    pub fn new(p: u8) -> Options {
        Options {
            p,
            sync: false,
            order_db: None,
            pin: None,
            edge_args: Vec::new(),
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
        self.create_user_as(http, None, email, delivery_address)
            .await
    }

    /// The same, with a bearer token (an edge that verifies them).
    pub async fn create_user_as(
        &self,
        http: &reqwest::Client,
        token: Option<&str>,
        email: &str,
        delivery_address: serde_json::Value,
    ) -> anyhow::Result<String> {
        let body = serde_json::json!({"emails": [email], "deliveryAddress": delivery_address});
        let mut request = http.post(format!("{}/users", self.edge)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply: serde_json::Value = request.send().await?.json().await?;
        reply["user"]["userId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("creating a user failed: {reply}"))
    }

    /// An admin API call with the stack's token; fails unless it answers 2xx.
    pub async fn admin(
        &self,
        http: &reqwest::Client,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = http
            .request(method, format!("{}{path}", self.edge))
            .bearer_auth(tandem_testkit::ADMIN_TOKEN);
        if !body.is_null() {
            request = request.json(&body);
        }
        let reply = request.send().await?;
        let status = reply.status();
        let text = reply.text().await?;
        anyhow::ensure!(status.is_success(), "{path} answered {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }

    pub async fn start(options: Options) -> anyhow::Result<Stack> {
        let mut builder = StackBuilder::edge()
            .p(options.p)
            .relays(true)
            .pin(options.pin)
            .env("RUST_LOG", "warn")
            .edge_args(
                &options
                    .edge_args
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
        if options.sync {
            builder = builder.with(Service::Worker);
        }
        if let Some(db) = &options.order_db {
            builder = builder.order_store(db);
        }
        let inner = builder.all_binaries().start().await;
        Ok(Stack {
            user_v1: inner.addr(Service::UserV1).to_string(),
            orders: inner.addr(Service::Orders).to_string(),
            edge: inner.url(Service::Edge),
            worker_ops: options.sync.then(|| inner.ops(Service::Worker)),
            user_ops: if options.sync {
                vec![inner.ops(Service::UserV1), inner.ops(Service::UserV2)]
            } else {
                Vec::new()
            },
            inner,
        })
    }

    /// Resident memory of each process, in MiB.
    pub fn memory_mib(&self) -> Vec<(String, f64)> {
        self.inner.memory_mib()
    }

    /// CPU time (user + system) each process has used so far, in seconds, with the
    /// load generator itself as "load generator".
    pub fn cpu_seconds(&self) -> Vec<(String, f64)> {
        self.inner.cpu_seconds()
    }
}

/// CPU µs per request of each process between two `Stack::cpu_seconds` readings, to a
/// tenth of a µs; the load generator and processes under 1 µs left out.
pub fn cpu_us_per_request(
    before: &[(String, f64)],
    after: &[(String, f64)],
    requests: u64,
) -> Vec<(String, f64)> {
    before
        .iter()
        .zip(after)
        .filter(|((name, _), _)| name != "load generator")
        .map(|((name, b), (_, a))| {
            let us = (a - b) * 1e6 / (requests.max(1) as f64);
            (name.clone(), (us * 10.0).round() / 10.0)
        })
        .filter(|(_, us)| *us >= 1.0)
        .collect()
}
