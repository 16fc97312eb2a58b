//! The contact sync as real processes: user-svc (with its outbox relay), order-svc and
//! sync-worker, on a real RabbitMQ with names of their own, optionally behind a chaos
//! proxy so the broker can vanish for them alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem::proto::order::v1::{CreateOrderRequest, ListOrdersRequest, OrderItem, OrderStatus};
use tandem::proto::user::v1::user_service_client::UserServiceClient;
use tandem::proto::user::v1::{CreateUserRequest, UpdateUserContactRequest};
use tandem_messaging::amqp::Topology;
use tandem_testkit::{ChaosProxy, Proc, bin, eventually, free_port, remove_topology, wait_serving};
use tonic::transport::Channel;

use super::{PbAddress, address};

pub const RABBITMQ: &str = "127.0.0.1:5672";

pub fn amqp_url(addr: SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// Where a user's contact should end up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub emails: Vec<String>,
    pub street: String,
}

pub struct SyncStack {
    pub dir: tempfile::TempDir,
    pub topology: Topology,
    /// Between the sync processes and RabbitMQ.
    pub proxy: ChaosProxy,
    pub user_addr: String,
    pub order_addr: String,
    pub worker_ops: String,
    pub user_ops: String,
    pub user_svc: Option<Proc>,
    /// A v2 flavor over the same store, when a test starts one.
    pub user_svc_v2: Option<Proc>,
    pub order_svc: Option<Proc>,
    pub worker: Option<Proc>,
    pub edge: Option<Proc>,
    restarts: usize,
}

fn topology_args(t: &Topology) -> Vec<String> {
    vec![
        "--amqp-exchange".into(),
        t.exchange.clone(),
        "--amqp-queue".into(),
        t.queue.clone(),
        "--amqp-dead-letter".into(),
        t.dead_letter.clone(),
    ]
}

impl Drop for SyncStack {
    fn drop(&mut self) {
        // The processes first: a relay or worker still running would declare the
        // topology again.
        drop(self.edge.take());
        drop(self.worker.take());
        drop(self.user_svc.take());
        drop(self.user_svc_v2.take());
        drop(self.order_svc.take());
        remove_topology(&amqp_url(RABBITMQ.parse().unwrap()), &self.topology);
    }
}

impl SyncStack {
    pub async fn start() -> SyncStack {
        let dir = tempfile::tempdir().unwrap();
        let topology = Topology::prefixed(&format!("test-{}", uuid::Uuid::new_v4().simple()));
        let proxy = ChaosProxy::start(RABBITMQ.parse().unwrap()).await;
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let mut stack = SyncStack {
            dir,
            topology,
            proxy,
            user_addr: addr(free_port()),
            order_addr: addr(free_port()),
            worker_ops: addr(free_port()),
            user_ops: addr(free_port()),
            user_svc: None,
            user_svc_v2: None,
            order_svc: None,
            worker: None,
            edge: None,
            restarts: 0,
        };
        stack.start_order_svc().await;
        stack.start_user_svc().await;
        stack.start_worker().await;
        stack
    }

    fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    fn next_name(&mut self, base: &str) -> String {
        self.restarts += 1;
        format!("{base}-{}", self.restarts)
    }

    pub async fn start_user_svc(&mut self) {
        let mut command = Command::new(bin("user-svc"));
        command
            .current_dir(self.dir.path())
            .args(["--listen", &self.user_addr, "--ops-listen", &self.user_ops])
            .args(["--amqp", &amqp_url(self.proxy.addr)])
            .args(topology_args(&self.topology));
        let name = self.next_name("user-svc");
        self.user_svc = Some(Proc::start(&name, &mut command, self.log_dir()));
        wait_serving(&self.user_addr, Duration::from_secs(20)).await;
    }

    /// Starts user-svc v2 over the same store (its own relay included); returns its
    /// gRPC address.
    pub async fn start_user_svc_v2(&mut self) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(bin("user-svc"));
        command
            .current_dir(self.dir.path())
            .args(["--flavor", "v2", "--listen", &addr])
            .args(["--ops-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--amqp", &amqp_url(self.proxy.addr)])
            .args(topology_args(&self.topology));
        let name = self.next_name("user-svc-v2");
        self.user_svc_v2 = Some(Proc::start(&name, &mut command, self.log_dir()));
        wait_serving(&addr, Duration::from_secs(20)).await;
        addr
    }

    pub async fn start_order_svc(&mut self) {
        let mut command = Command::new(bin("order-svc"));
        command.current_dir(self.dir.path()).args([
            "--listen",
            &self.order_addr,
            "--ops-listen",
            &format!("127.0.0.1:{}", free_port()),
        ]);
        let name = self.next_name("order-svc");
        self.order_svc = Some(Proc::start(&name, &mut command, self.log_dir()));
        wait_serving(&self.order_addr, Duration::from_secs(20)).await;
    }

    pub async fn start_worker(&mut self) {
        let mut command = Command::new(bin("sync-worker"));
        command
            .current_dir(self.dir.path())
            .args(["--amqp", &amqp_url(self.proxy.addr)])
            .args(["--orders", &format!("http://{}", self.order_addr)])
            .args(["--ops-listen", &self.worker_ops])
            .args(topology_args(&self.topology));
        let name = self.next_name("sync-worker");
        self.worker = Some(Proc::start(&name, &mut command, self.log_dir()));
        let ops = self.worker_ops.clone();
        eventually(Duration::from_secs(20), "the worker to consume", || {
            let ops = ops.clone();
            async move { (metric(&ops, "tandem_sync_connected").await == Some(1.0)).then_some(()) }
        })
        .await;
    }

    /// Starts an edge in front of user-svc v1 (`user_addr`), `v2_addr` and order-svc, with
    /// the dial at `p`; returns a client for it.
    pub async fn start_edge(&mut self, v2_addr: &str, p: u8) -> super::Http {
        let addr = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            self.dir.path().join("routing.json"),
            format!(r#"{{"P": {p}}}"#),
        )
        .unwrap();
        let mut command = Command::new(bin("edge"));
        command.current_dir(self.dir.path()).args([
            "--listen",
            &addr,
            "--user-v1",
            &format!("http://{}", self.user_addr),
            "--user-v2",
            &format!("http://{v2_addr}"),
            "--orders",
            &format!("http://{}", self.order_addr),
            "--routing-config",
            "routing.json",
            "--upstream-timeout-ms",
            "3000",
        ]);
        let name = self.next_name("edge");
        self.edge = Some(Proc::start(&name, &mut command, self.log_dir()));
        let http = super::Http::new(&format!("http://{addr}"));
        let probe = http.clone();
        eventually(Duration::from_secs(20), "the edge to be healthy", || {
            let probe = probe.clone();
            async move {
                let reply = probe
                    .request(reqwest::Method::GET, "/health")
                    .send()
                    .await
                    .ok()?;
                reply.status().is_success().then_some(())
            }
        })
        .await;
        http
    }

    /// Runs `sync-worker ARGS` (the DLQ tools) against this stack's broker and names.
    pub fn worker_command(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("sync-worker"))
            .args(args)
            .args(["--amqp", &amqp_url(RABBITMQ.parse().unwrap())])
            .args(topology_args(&self.topology))
            .output()
            .unwrap()
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(super::channel(&format!("http://{}", self.user_addr)).await)
    }

    pub async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(super::channel(&format!("http://{}", self.order_addr)).await)
    }

    /// Creates `n` users with `orders_each` orders (the last one shipping); returns their
    /// ids and contacts.
    pub async fn seed(&self, n: usize, orders_each: usize) -> HashMap<String, Contact> {
        let (mut users, mut orders) = (self.users().await, self.orders().await);
        let mut seeded = HashMap::new();
        for i in 0..n {
            let email = super::unique_email(&format!("seed{i}"));
            let user = users
                .create_user(CreateUserRequest {
                    emails: vec![email.clone()],
                    delivery_address: Some(address("1 Seed St")),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .user
                .unwrap();
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
                        delivery_address: Some(address("1 Seed St")),
                        order_status: status as i32,
                    })
                    .await
                    .unwrap();
            }
            seeded.insert(
                user.user_id,
                Contact {
                    emails: vec![email],
                    street: "1 Seed St".into(),
                },
            );
        }
        seeded
    }

    /// Changes a user's contact through user-svc; returns what it became.
    pub async fn update(
        &self,
        users: &mut UserServiceClient<Channel>,
        user_id: &str,
        step: usize,
    ) -> Contact {
        let contact = Contact {
            emails: vec![super::unique_email(&format!("step{step}"))],
            street: format!("{step} Update Ave"),
        };
        users
            .update_user_contact(UpdateUserContactRequest {
                user_id: user_id.into(),
                emails: contact.emails.clone(),
                delivery_address: Some(PbAddress {
                    street: contact.street.clone(),
                    ..address("")
                }),
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
                if !open && street != "1 Seed St" {
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

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for p in [&self.user_svc, &self.order_svc, &self.worker]
            .into_iter()
            .flatten()
        {
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
}

/// The value of an unlabelled metric on an ops port, if it answers.
pub async fn metric(ops_addr: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{ops_addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with([' ', '_']) && !l.contains('{')
        })
        .and_then(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name || key == format!("{name}_total")).then(|| value.parse().ok())?
        })
}
