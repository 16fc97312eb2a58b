//! One launcher for a running tandem, used by the end-to-end tests and the benchmarks:
//! user-svc v1 and v2, order-svc, the sync worker and the edge, each either in this
//! process (fast, no build needed beyond the test) or as its real binary (where a test
//! kills, freezes or signals it, or a benchmark measures it on its own).
//!
//! Every service's ports are [`PortReservation`]s made when the stack is built: servers
//! in this process get a listener on them, binaries get one handed over (socket
//! activation), and a service restarted comes back at the same address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tandem::domain::Flavor;
use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem::proto::order::v1::{CreateOrderRequest, ListOrdersRequest, OrderItem, OrderStatus};
use tandem::proto::user::v1::user_service_client::UserServiceClient;
use tandem::proto::user::v1::{CreateUserRequest, UpdateUserContactRequest};
use tandem_messaging::Topology;
use tandem_storage::StoreUrl;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::broker::{self, remove_topology};
use crate::chaos::ChaosProxy;
use crate::fixtures::{address, unique_email};
use crate::http::Http;
use crate::ports::PortReservation;
use crate::proc::{Proc, bin};
use crate::python::PythonFlavor;
use crate::{eventually, metric, wait_serving};

/// The admin token of every test edge.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// How long a service may take to become ready after it starts.
const READY: Duration = Duration::from_secs(60);

/// The processes of tandem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Orders,
    UserV1,
    UserV2,
    Worker,
    Edge,
    /// A second edge replica (for tests of several edges).
    EdgeB,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::UserV1 => Flavor::V1.service_name(),
            Service::UserV2 => Flavor::V2.service_name(),
            Service::Orders => "order-svc",
            Service::Worker => "sync-worker",
            Service::Edge => "edge",
            Service::EdgeB => "edge-b",
        }
    }

    pub fn user(flavor: Flavor) -> Service {
        match flavor {
            Flavor::V1 => Service::UserV1,
            Flavor::V2 => Service::UserV2,
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Service::UserV1 | Service::UserV2 => "user-svc",
            Service::EdgeB => "edge",
            other => other.name(),
        }
    }

    fn is_edge(self) -> bool {
        matches!(self, Service::Edge | Service::EdgeB)
    }

    /// Whether the service serves an ops port of its own (the edge's metrics are on its
    /// main port).
    fn has_ops(self) -> bool {
        !self.is_edge()
    }
}

/// CPUs to pin processes to (benchmarks: the edge on a core of its own).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Pinning {
    pub edge_cpu: usize,
    pub others_cpu: usize,
}

/// What to start, and how.
#[derive(Clone)]
pub struct StackBuilder {
    services: BTreeSet<Service>,
    binaries: BTreeSet<Service>,
    relays: bool,
    proxy: bool,
    p: Option<u8>,
    admin_token: Option<String>,
    upstream_timeout: Duration,
    request_timeout: Duration,
    order_store: Option<PathBuf>,
    worker_orders: Option<Service>,
    retry_budget: Option<Duration>,
    env: Vec<(String, String)>,
    pin: Option<Pinning>,
    cluster: bool,
    python_v2: bool,
    edge_args: Vec<String>,
}

impl StackBuilder {
    /// Nothing yet; add services with [`with`](Self::with) or [`binary`](Self::binary).
    pub fn new() -> StackBuilder {
        StackBuilder {
            services: BTreeSet::new(),
            binaries: BTreeSet::new(),
            relays: false,
            proxy: false,
            p: None,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            upstream_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            order_store: None,
            worker_orders: None,
            retry_budget: None,
            env: Vec::new(),
            pin: None,
            cluster: false,
            python_v2: false,
            edge_args: Vec::new(),
        }
    }

    /// The REST API: both user flavors (no outbox relays), order-svc and the edge, all
    /// in this process.
    pub fn edge() -> StackBuilder {
        StackBuilder::new()
            .with(Service::UserV1)
            .with(Service::UserV2)
            .with(Service::Orders)
            .with(Service::Edge)
    }

    /// The contact sync: order-svc, user-svc v1 with its outbox relay and the worker, as
    /// real processes, reaching RabbitMQ through a chaos proxy of the stack's own.
    pub fn sync() -> StackBuilder {
        StackBuilder::new()
            .binary(Service::Orders)
            .binary(Service::UserV1)
            .binary(Service::Worker)
            .relays(true)
            .broker_proxy(true)
    }

    pub fn with(mut self, service: Service) -> Self {
        self.services.insert(service);
        if service == Service::Worker {
            self.relays = true;
        }
        self
    }

    /// Runs `service` as its real binary.
    pub fn binary(mut self, service: Service) -> Self {
        self.binaries.insert(service);
        self.with(service)
    }

    /// Runs `service` in this process.
    pub fn in_process(mut self, service: Service) -> Self {
        self.binaries.remove(&service);
        self.with(service)
    }

    /// Every service as its real binary.
    pub fn all_binaries(mut self) -> Self {
        self.binaries = self.services.clone();
        self
    }

    /// Whether the user services relay their outbox to RabbitMQ (on with the worker).
    pub fn relays(mut self, on: bool) -> Self {
        self.relays = on;
        self
    }

    /// Whether the services reach RabbitMQ through a [`ChaosProxy`] (see
    /// [`Stack::proxy`]).
    pub fn broker_proxy(mut self, on: bool) -> Self {
        self.proxy = on;
        self
    }

    /// The dial (P) the edge starts with; without it there is no routing file (P = 100).
    pub fn p(mut self, p: u8) -> Self {
        self.p = Some(p);
        self
    }

    pub fn admin_token(mut self, token: Option<&str>) -> Self {
        self.admin_token = token.map(str::to_owned);
        self
    }

    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = timeout;
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// order-svc serves this SQLite file rather than a fresh one.
    pub fn order_store(mut self, path: &Path) -> Self {
        self.order_store = Some(path.to_owned());
        self
    }

    /// The worker sends its ApplyUserContact calls to `service` instead of order-svc (to
    /// meet a server that can never apply them).
    pub fn worker_applies_to(mut self, service: Service) -> Self {
        self.worker_orders = Some(service);
        self
    }

    pub fn retry_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = Some(budget);
        self
    }

    /// An environment variable for every binary (`RUST_LOG`, `LOG_FORMAT`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn pin(mut self, pin: Option<Pinning>) -> Self {
        self.pin = pin;
        self
    }

    /// Flags of the edge's guard and TLS (`--jwks`, `--rate-limit`, `--tls-cert`…), read
    /// by the edge's own parser whether it runs in this process or as a binary.
    pub fn edge_args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.edge_args = args.iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// The edges form one cluster (through RabbitMQ), each with a state directory of its
    /// own, so whatever they share travels through the broker.
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// The edges' v2 is the Python flavor (tests/clients/flavor.py) in front of user-svc
    /// v2, which the test can make differ, fail or slow down ([`Stack::python`]).
    pub fn python_v2(mut self) -> Self {
        self.python_v2 = true;
        self.with(Service::UserV2)
    }

    pub async fn start(self) -> Stack {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A user-svc binary always runs its outbox relay: it gets names of its own too.
        let needs_broker = self.relays
            || self.cluster
            || self.services.contains(&Service::Worker)
            || self
                .binaries
                .iter()
                .any(|s| matches!(s, Service::UserV1 | Service::UserV2));
        let broker_url = broker::amqp_url();
        let (topology, proxy) = if needs_broker {
            let proxy = if self.proxy {
                Some(ChaosProxy::start(broker::broker_addr(&broker_url).await).await)
            } else {
                None
            };
            (Some(broker::unique_topology("test")), proxy)
        } else {
            (None, None)
        };
        let amqp_url = match &proxy {
            Some(proxy) => broker::url_via(&broker_url, proxy.addr),
            None => broker_url.clone(),
        };
        std::fs::create_dir_all(dir.path().join("edge-b")).expect("a state directory");
        if let Some(p) = self.p {
            for file in ["routing.json", "edge-b/routing.json"] {
                std::fs::write(dir.path().join(file), format!(r#"{{"P": {p}}}"#))
                    .expect("the routing file can be written");
            }
        }
        let cluster_name = self
            .cluster
            .then(|| format!("test-{}", uuid::Uuid::new_v4().simple()));
        let parts = self
            .services
            .iter()
            .map(|&service| {
                (
                    service,
                    Part {
                        binary: self.binaries.contains(&service),
                        starts: 0,
                        port: PortReservation::new(),
                        ops: service.has_ops().then(PortReservation::new),
                        running: None,
                    },
                )
            })
            .collect();
        let mut stack = Stack {
            dir,
            topology,
            broker_url,
            amqp_url,
            proxy,
            parts,
            settings: self,
            cluster_name,
            python: None,
        };
        let services: Vec<Service> = stack.parts.keys().copied().collect();
        for service in services {
            stack.start(service).await;
            if service == Service::UserV2 && stack.settings.python_v2 {
                let upstream = stack.addr(Service::UserV2).to_string();
                stack.python = Some(PythonFlavor::start(stack.dir.path(), &upstream).await);
            }
        }
        stack
    }
}

impl Default for StackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

struct Part {
    binary: bool,
    /// How often it was started (binaries' logs are numbered by it).
    starts: usize,
    port: PortReservation,
    ops: Option<PortReservation>,
    running: Option<Running>,
}

enum Running {
    InProcess {
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    },
    Binary(Proc),
}

/// A running tandem. Dropping it stops everything and removes its RabbitMQ names.
pub struct Stack {
    pub dir: tempfile::TempDir,
    /// The stack's own RabbitMQ names, when it uses the broker.
    pub topology: Option<Topology>,
    /// The broker itself.
    broker_url: String,
    /// The broker as the services reach it (through the proxy, when there is one).
    amqp_url: String,
    proxy: Option<ChaosProxy>,
    parts: BTreeMap<Service, Part>,
    settings: StackBuilder,
    cluster_name: Option<String>,
    python: Option<PythonFlavor>,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder::new()
    }

    fn part(&self, service: Service) -> &Part {
        self.parts
            .get(&service)
            .unwrap_or_else(|| panic!("{} is not part of this stack", service.name()))
    }

    fn part_mut(&mut self, service: Service) -> &mut Part {
        self.parts
            .get_mut(&service)
            .unwrap_or_else(|| panic!("{} is not part of this stack", service.name()))
    }

    /// The main address of a service (gRPC, or the edge's HTTP).
    pub fn addr(&self, service: Service) -> SocketAddr {
        self.part(service).port.addr()
    }

    /// `http://ADDR` of a service.
    pub fn url(&self, service: Service) -> String {
        format!("http://{}", self.addr(service))
    }

    /// The ops port (`/metrics`, `/healthz`) of a service, as `host:port`.
    pub fn ops(&self, service: Service) -> String {
        self.part(service)
            .ops
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no ops port", service.name()))
            .addr()
            .to_string()
    }

    /// A client of the edge.
    pub fn http(&self) -> Http {
        self.http_of(Service::Edge)
    }

    /// A client of one edge replica.
    pub fn http_of(&self, edge: Service) -> Http {
        Http::new(&self.url(edge))
    }

    /// The Python flavor behind the edges' v2 ([`StackBuilder::python_v2`]).
    pub fn python(&self) -> &PythonFlavor {
        self.python
            .as_ref()
            .expect("this stack has no Python flavor: start it with .python_v2()")
    }

    /// Where the edges reach v2: the Python flavor when there is one.
    fn v2_url(&self) -> String {
        match &self.python {
            Some(python) => python.url(),
            None => self.url(Service::UserV2),
        }
    }

    pub fn proxy(&self) -> &ChaosProxy {
        self.proxy
            .as_ref()
            .expect("this stack reaches RabbitMQ without a proxy")
    }

    pub fn topology(&self) -> &Topology {
        self.topology.as_ref().expect("this stack has no broker")
    }

    pub fn routing_file(&self) -> PathBuf {
        self.routing_file_of(Service::Edge)
    }

    /// The routing file of one edge replica (each has a directory of its own).
    pub fn routing_file_of(&self, edge: Service) -> PathBuf {
        match edge {
            Service::EdgeB => self.dir.path().join("edge-b/routing.json"),
            _ => self.dir.path().join("routing.json"),
        }
    }

    fn cluster_settings(&self) -> Option<edge::ClusterSettings> {
        self.cluster_name
            .as_ref()
            .map(|name| edge::ClusterSettings {
                amqp_url: self.broker_url.clone(),
                name: name.clone(),
            })
    }

    /// The SQLite file both user flavors share (where the binaries keep it by default).
    pub fn user_db(&self) -> PathBuf {
        self.dir.path().join("data/user_db.sqlite")
    }

    fn order_db(&self) -> PathBuf {
        self.settings
            .order_store
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data/order_db.sqlite"))
    }

    fn worker_orders(&self) -> String {
        self.url(self.settings.worker_orders.unwrap_or(Service::Orders))
    }

    /// (Re)starts a service and waits until it is ready.
    pub async fn start(&mut self, service: Service) {
        assert!(
            self.part(service).running.is_none() || !self.is_running(service),
            "{} is already running",
            service.name()
        );
        let running = if self.part(service).binary {
            Running::Binary(self.spawn(service))
        } else {
            self.serve_in_process(service).await
        };
        self.part_mut(service).running = Some(running);
        self.wait_ready(service).await;
    }

    fn is_running(&mut self, service: Service) -> bool {
        match &mut self.part_mut(service).running {
            Some(Running::Binary(proc)) => proc.is_running(),
            Some(Running::InProcess { task, .. }) => !task.is_finished(),
            None => false,
        }
    }

    async fn serve_in_process(&self, service: Service) -> Running {
        let part = self.part(service);
        let listener = part.port.tokio_listener();
        let ops = part.ops.as_ref().map(PortReservation::tokio_listener);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let relay = (self.settings.relays && self.topology.is_some())
            .then(|| user_svc::RelayConfig::new(self.amqp_url.clone(), self.topology().clone()));
        let task = match service {
            Service::UserV1 | Service::UserV2 => {
                let flavor = if service == Service::UserV1 {
                    Flavor::V1
                } else {
                    Flavor::V2
                };
                let svc = user_svc::UserSvc::open(user_svc::Config {
                    flavor,
                    store: StoreUrl::Sqlite(self.user_db()),
                    relay,
                })
                .await
                .expect("user-svc opens its store");
                tokio::spawn(async move {
                    svc.serve(listener, ops, token)
                        .await
                        .expect("user-svc serves")
                })
            }
            Service::Orders => {
                let svc = order_svc::OrderSvc::open(order_svc::Config {
                    store: StoreUrl::Sqlite(self.order_db()),
                })
                .await
                .expect("order-svc opens its store");
                tokio::spawn(async move {
                    svc.serve(listener, ops, token)
                        .await
                        .expect("order-svc serves")
                })
            }
            Service::Worker => {
                let mut config = sync_worker::Config::new(
                    self.amqp_url.clone(),
                    self.worker_orders(),
                    self.topology().clone(),
                );
                if let Some(budget) = self.settings.retry_budget {
                    config.retry_budget = budget;
                }
                let worker = sync_worker::Worker::new(config).expect("a worker");
                drop(listener); // the worker serves its ops port only
                tokio::spawn(async move { worker.run(ops, token).await.expect("the worker runs") })
            }
            Service::Edge | Service::EdgeB => {
                let protection = edge::guard::args::GuardArgs::parse_from(&self.settings.edge_args)
                    .expect("valid edge flags")
                    .into_config();
                let config = edge::Config {
                    upstreams: edge::UpstreamConfig {
                        user_v1: self.url(Service::UserV1),
                        user_v2: self.v2_url(),
                        orders: self.url(Service::Orders),
                        timeout: self.settings.upstream_timeout,
                    },
                    routing_file: self.routing_file_of(service),
                    routing_poll: Duration::from_millis(50),
                    admin_token: self
                        .settings
                        .admin_token
                        .clone()
                        .and_then(edge::AdminToken::new),
                    request_timeout: self.settings.request_timeout,
                    cluster: self.cluster_settings(),
                    guard: protection.guard,
                    tls: protection.tls,
                    ejection: protection.ejection,
                };
                let edge = edge::Edge::new(config).await.expect("an edge");
                tokio::spawn(
                    async move { edge.serve(listener, token).await.expect("the edge serves") },
                )
            }
        };
        Running::InProcess { shutdown, task }
    }

    fn spawn(&mut self, service: Service) -> Proc {
        let part = self.part_mut(service);
        part.starts += 1;
        // The first run is the service's name; restarts are numbered (logs stay apart).
        let name = match part.starts {
            1 => service.name().to_owned(),
            n => format!("{}-{n}", service.name()),
        };
        let mut command = match self.settings.pin {
            Some(pin) => {
                let cpu = if service.is_edge() {
                    pin.edge_cpu
                } else {
                    pin.others_cpu
                };
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(bin(service.binary()));
                c
            }
            None => Command::new(bin(service.binary())),
        };
        command
            .current_dir(self.dir.path())
            .envs(self.settings.env.iter().cloned());
        let topology = self
            .topology
            .as_ref()
            .map(Topology::to_args)
            .unwrap_or_default();
        match service {
            Service::UserV1 | Service::UserV2 => {
                let flavor = if service == Service::UserV1 {
                    "v1"
                } else {
                    "v2"
                };
                command
                    .args(["--flavor", flavor, "--amqp", &self.amqp_url])
                    .args(&topology);
            }
            Service::Orders => {
                if let Some(store) = &self.settings.order_store {
                    command.args(["--store", &format!("sqlite://{}", store.display())]);
                }
            }
            Service::Worker => {
                command
                    .args(["--amqp", &self.amqp_url, "--orders", &self.worker_orders()])
                    .args(&topology);
                if let Some(budget) = self.settings.retry_budget {
                    command.args(["--retry-budget-secs", &budget.as_secs().to_string()]);
                }
            }
            Service::Edge | Service::EdgeB => {
                let routing = if service == Service::EdgeB {
                    "edge-b/routing.json"
                } else {
                    "routing.json"
                };
                command.args([
                    "--user-v1",
                    &self.url(Service::UserV1),
                    "--user-v2",
                    &self.v2_url(),
                    "--orders",
                    &self.url(Service::Orders),
                    "--routing-config",
                    routing,
                    "--routing-poll-ms",
                    "50",
                    "--upstream-timeout-ms",
                    &self.settings.upstream_timeout.as_millis().to_string(),
                    "--request-timeout-ms",
                    &self.settings.request_timeout.as_millis().to_string(),
                ]);
                if let Some(token) = &self.settings.admin_token {
                    command.env("EDGE_ADMIN_TOKEN", token);
                }
                if let Some(cluster) = self.cluster_settings() {
                    command.args(["--cluster", &cluster.name, "--amqp", &cluster.amqp_url]);
                }
                command.args(&self.settings.edge_args);
            }
        }
        let part = self.part(service);
        // The worker's only socket is its ops port.
        let listeners = match (service, &part.ops) {
            (Service::Worker, Some(ops)) => vec![ops.listener()],
            (_, Some(ops)) => vec![part.port.listener(), ops.listener()],
            (_, None) => vec![part.port.listener()],
        };
        Proc::start(&name, command, listeners, self.dir.path())
    }

    async fn wait_ready(&self, service: Service) {
        match service {
            Service::UserV1 | Service::UserV2 | Service::Orders => {
                wait_serving(&self.addr(service).to_string(), READY).await
            }
            Service::Worker => {
                let ops = self.ops(service);
                eventually(READY, "the worker to consume", || {
                    let ops = ops.clone();
                    async move {
                        (metric(&ops, "tandem_sync_connected").await == Some(1.0)).then_some(())
                    }
                })
                .await
            }
            Service::Edge | Service::EdgeB
                if self.settings.edge_args.iter().any(|a| a == "--tls-cert") =>
            {
                // HTTPS with a certificate the test made: the port accepting is enough here;
                // the test makes its own TLS client.
                let addr = self.addr(service);
                eventually(READY, "the edge to accept", || async move {
                    tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
                })
                .await
            }
            Service::Edge | Service::EdgeB => {
                let health = format!("{}/health", self.url(service));
                eventually(READY, "the edge to answer", || {
                    let health = health.clone();
                    async move { reqwest::get(&health).await.ok().map(|_| ()) }
                })
                .await
            }
        }
    }

    /// Stops a service the way an operator would (SIGTERM, or its shutdown signal in this
    /// process) and waits until it has; returns a binary's exit status.
    pub async fn stop(&mut self, service: Service) -> Option<std::process::ExitStatus> {
        match self.part_mut(service).running.take() {
            Some(Running::InProcess { shutdown, task }) => {
                shutdown.cancel();
                task.await.expect("the service stopped cleanly");
                None
            }
            Some(Running::Binary(mut proc)) => Some(proc.terminate(Duration::from_secs(10)).await),
            None => None,
        }
    }

    fn proc_slot(&mut self, service: Service) -> &mut Proc {
        match &mut self.part_mut(service).running {
            Some(Running::Binary(proc)) => proc,
            _ => panic!(
                "{} is not running as a binary: start the stack with .binary(Service::…)",
                service.name()
            ),
        }
    }

    /// The process of a service run as a binary.
    pub fn proc(&self, service: Service) -> &Proc {
        match &self.part(service).running {
            Some(Running::Binary(proc)) => proc,
            _ => panic!("{} is not running as a binary", service.name()),
        }
    }

    /// SIGKILLs a binary, as a crash would, and waits until it is gone.
    pub async fn kill(&mut self, service: Service) {
        self.proc_slot(service).kill().await;
    }

    /// Sends a signal to a binary (SIGSTOP to freeze it, SIGCONT, SIGTERM…).
    pub fn signal(&mut self, service: Service, signal: nix::sys::signal::Signal) {
        self.proc_slot(service).signal(signal);
    }

    /// Waits for a binary to exit by itself.
    pub async fn wait_exit(
        &mut self,
        service: Service,
        timeout: Duration,
    ) -> std::process::ExitStatus {
        self.proc_slot(service).wait(timeout).await
    }

    /// Resident memory of each binary, in MiB.
    pub fn memory_mib(&self) -> Vec<(String, f64)> {
        self.procs()
            .map(|p| (p.name.clone(), p.rss_mib()))
            .collect()
    }

    /// CPU time each binary has used so far, in seconds, with this process as "load
    /// generator".
    pub fn cpu_seconds(&self) -> Vec<(String, f64)> {
        let mut all: Vec<(String, f64)> = self
            .procs()
            .map(|p| (p.name.clone(), p.cpu_seconds()))
            .collect();
        all.push((
            "load generator".to_owned(),
            crate::proc::cpu_seconds("/proc/self/stat"),
        ));
        all
    }

    fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.parts.values().filter_map(|part| match &part.running {
            Some(Running::Binary(proc)) => Some(proc),
            _ => None,
        })
    }

    /// The last lines of every binary's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for p in self.procs() {
            let text = p.output();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            all.push_str(&format!("--- {} (last lines)\n", p.name));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    // === clients ===

    pub async fn user_client(&self, flavor: Flavor) -> UserServiceClient<Channel> {
        UserServiceClient::new(crate::channel(&self.url(Service::user(flavor))).await)
    }

    /// A client of user-svc v1.
    pub async fn users(&self) -> UserServiceClient<Channel> {
        self.user_client(Flavor::V1).await
    }

    pub async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(crate::channel(&self.url(Service::Orders)).await)
    }

    /// Runs `sync-worker ARGS` (the DLQ tools) against this stack's broker and names.
    pub fn worker_command(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("sync-worker"))
            .args(args)
            .args(["--amqp", &self.broker_url])
            .args(self.topology().to_args())
            // Every log line on: a command's logs must stay off the answer the tests
            // read from its standard output (AMQP's own debug lines included).
            .env("RUST_LOG", "debug")
            .output()
            .expect("sync-worker runs")
    }

    // === the contact sync ===

    /// Creates `n` users with `orders_each` orders (the last one shipping); returns their
    /// ids and contacts.
    pub async fn seed(&self, n: usize, orders_each: usize) -> HashMap<String, Contact> {
        let (mut users, mut orders) = (self.users().await, self.orders().await);
        let mut seeded = HashMap::new();
        for i in 0..n {
            let email = unique_email(&format!("seed{i}"));
            let user = users
                .create_user(CreateUserRequest {
                    emails: vec![email.clone()],
                    delivery_address: Some(address(SEED_STREET)),
                    ..Default::default()
                })
                .await
                .expect("a user is created")
                .into_inner()
                .user
                .expect("the created user");
            for o in 0..orders_each {
                let status = if o + 1 == orders_each && orders_each > 1 {
                    OrderStatus::Shipping
                } else {
                    OrderStatus::UnderProcess
                };
                orders
                    .create_order(CreateOrderRequest {
                        user_id: user.user_id.clone(),
                        items: vec![OrderItem {
                            item_id: "thing".into(),
                            quantity: 1,
                            price: Some(tandem::proto::common::v1::Decimal {
                                value: "9.99".into(),
                            }),
                        }],
                        emails: vec![email.clone()],
                        delivery_address: Some(address(SEED_STREET)),
                        order_status: status as i32,
                    })
                    .await
                    .expect("an order is created");
            }
            seeded.insert(
                user.user_id,
                Contact {
                    emails: vec![email],
                    street: SEED_STREET.into(),
                },
            );
        }
        seeded
    }

    /// Changes a user's contact through `users`; returns what it became.
    pub async fn update(
        &self,
        users: &mut UserServiceClient<Channel>,
        user_id: &str,
        step: usize,
    ) -> Contact {
        let contact = Contact {
            emails: vec![unique_email(&format!("step{step}"))],
            street: format!("{step} Update Ave"),
        };
        users
            .update_user_contact(UpdateUserContactRequest {
                user_id: user_id.into(),
                emails: contact.emails.clone(),
                delivery_address: Some(address(&contact.street)),
                update_mask: None,
            })
            .await
            .unwrap_or_else(|s| panic!("update of {user_id} failed: {s:?}"));
        contact
    }

    /// Whether every order of every user shows that user's expected contact (the street
    /// only on orders still under process).
    pub async fn converged(&self, expected: &HashMap<String, Contact>) -> Result<(), String> {
        let mut orders = self.orders().await;
        for (user_id, contact) in expected {
            let list = orders
                .list_orders(ListOrdersRequest {
                    user_id: user_id.clone(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("list failed: {s:?}"))?
                .into_inner();
            for order in list.orders {
                if order.emails != contact.emails {
                    return Err(format!(
                        "user {user_id}: order has {:?}, expected {:?}",
                        order.emails, contact.emails
                    ));
                }
                let street = order.delivery_address.map(|a| a.street).unwrap_or_default();
                let open = order.order_status == OrderStatus::UnderProcess as i32;
                if open && street != contact.street {
                    return Err(format!(
                        "user {user_id}: order has street {street:?}, expected {:?}",
                        contact.street
                    ));
                }
                if !open && street != SEED_STREET {
                    return Err(format!(
                        "user {user_id}: a shipped order's address changed to {street:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Waits until [`converged`](Self::converged) holds, or fails with the last mismatch
    /// and the processes' logs.
    pub async fn wait_converged(&self, expected: &HashMap<String, Contact>, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.converged(expected).await {
                Ok(()) => return,
                Err(why) if std::time::Instant::now() > deadline => {
                    panic!(
                        "orders did not converge within {timeout:?}: {why}\n{}",
                        self.logs()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// The street every seeded user and order starts with.
const SEED_STREET: &str = "1 Seed St";

/// Where a user's contact should end up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub emails: Vec<String>,
    pub street: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The services first: a relay or worker still running would declare the
        // topology again.
        for part in self.parts.values_mut() {
            match part.running.take() {
                Some(Running::InProcess { shutdown, task }) => {
                    shutdown.cancel();
                    task.abort();
                }
                Some(Running::Binary(proc)) => drop(proc),
                None => {}
            }
        }
        if let Some(topology) = &self.topology {
            remove_topology(&self.broker_url, topology);
        }
    }
}
