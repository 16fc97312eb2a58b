//! R2: sync lag. At a steady rate of user updates through the edge, the time from a PUT
//! answered to every order of that user showing the new contact. Bar: p99 ≤ 100 ms at
//! 200 updates/s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tandem::proto::order::v1::ListOrdersRequest;
use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tonic::transport::Channel;

use crate::stack::Stack;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct R2 {
    pub rate: f64,
    /// Where the rate came from, when not given ("80 % of the PUT capacity, …").
    #[serde(default)]
    pub label: Option<String>,
    pub seconds: f64,
    pub users: usize,
    pub orders_per_user: usize,
    pub updates: u64,
    /// Every `sample_every`-th update is watched until its orders show it; the rest are
    /// only sent. Watching is itself load on order-svc (a ListOrders every few ms per
    /// watched update), and watching all of them measured the watcher as much as the sync.
    pub sample_every: u64,
    /// Watched updates.
    pub watched: u64,
    /// Updates refused by the edge, and watched ones whose orders did not show them within
    /// 10 s (a user is updated again every `users / rate` seconds, so a lag longer than
    /// that also counts here: the newer email overwrites the watched one).
    pub not_converged: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The shortest polling interval; otherwise a tenth of the time waited.
    pub poll_ms: f64,
    /// The worker's own view, over every update: mean time from a change's commit to its
    /// application, and the histogram buckets (upper bounds) holding the p50 and p99.
    pub worker_mean_lag_ms: Option<f64>,
    pub worker_p50_le_ms: Option<f64>,
    pub worker_p99_le_ms: Option<f64>,
    /// The relays' share of that lag, over every update: from a change to the broker's
    /// confirm of its event (both flavors' relays together), the same buckets.
    #[serde(default)]
    pub relay_mean_lag_ms: Option<f64>,
    #[serde(default)]
    pub relay_p50_le_ms: Option<f64>,
    #[serde(default)]
    pub relay_p99_le_ms: Option<f64>,
    /// CPU each process used over the run, as a share of one core (1.0 = a whole core),
    /// the load generator (this process) included: on two cores, a sum near 2.0 means
    /// the machine, not one stage, is what the pipeline ran out of.
    #[serde(default)]
    pub cpu_cores: Vec<(String, f64)>,
}

impl R2 {
    /// Whether a bar applies at this rate: 200/s and 1,000/s, and a rate derived from the
    /// PUT capacity.
    pub fn has_bar(&self) -> bool {
        [200.0, 1000.0]
            .iter()
            .any(|bar| (self.rate - bar).abs() < 1e-9)
            || self.label.is_some()
    }

    /// The sync kept up: p99 ≤ 100 ms and every watched update converged.
    pub fn keeps_up(&self) -> bool {
        self.p99_ms <= 100.0 && self.not_converged == 0
    }
}

/// A Prometheus histogram as an ops port exposes it.
struct ScrapedHistogram {
    sum: f64,
    count: f64,
    /// (upper bound in seconds, cumulative count), in ascending order.
    buckets: Vec<(f64, f64)>,
}

impl ScrapedHistogram {
    async fn fetch(ops: &str, name: &str) -> Option<ScrapedHistogram> {
        let text = reqwest::get(format!("http://{ops}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}_{suffix} ")))
                .and_then(|l| l.rsplit_once(' '))
                .and_then(|(_, v)| v.parse::<f64>().ok())
        };
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                Some((le.parse::<f64>().ok()?, count.parse::<f64>().ok()?))
            })
            .collect();
        Some(ScrapedHistogram {
            sum: value("sum")?,
            count: value("count")?,
            buckets,
        })
    }

    /// One histogram of the same name from several processes, with the same buckets.
    async fn fetch_all(ops: &[String], name: &str) -> Option<ScrapedHistogram> {
        let mut all: Option<ScrapedHistogram> = None;
        for one in ops {
            let h = Self::fetch(one, name).await?;
            all = Some(match all {
                None => h,
                Some(a) => ScrapedHistogram {
                    sum: a.sum + h.sum,
                    count: a.count + h.count,
                    buckets: a
                        .buckets
                        .iter()
                        .zip(&h.buckets)
                        .map(|((le, x), (_, y))| (*le, x + y))
                        .collect(),
                },
            });
        }
        all
    }

    fn mean_ms(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count * 1000.0)
    }

    /// The upper bound of the bucket holding quantile `q`: the quantile is at most this.
    fn quantile_le_ms(&self, q: f64) -> Option<f64> {
        let rank = q * self.count;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= rank && self.count > 0.0)
            .map(|(le, _)| le * 1000.0)
    }
}

pub struct Settings {
    pub rate: f64,
    pub label: Option<String>,
    pub duration: Duration,
    pub users: usize,
    pub orders_per_user: usize,
    pub sample_every: u64,
}

/// How often a watched update's orders are checked: every tenth of the time waited so
/// far, but at least every millisecond, so a figure is exact to about 10 % (or 1 ms).
/// Watching costs order-svc a ListOrders per check; a fixed 2 ms interval for the first
/// 100 ms made each watch of a late update cost 50 calls, which at 400 updates/s was
/// enough load to make every update late.
const POLL_MIN: Duration = Duration::from_millis(1);

fn poll_interval(waited: Duration) -> Duration {
    (waited / 10).max(POLL_MIN)
}

fn address(street: &str) -> serde_json::Value {
    serde_json::json!({"street": street, "city": "Ottawa", "province": "ON", "postalCode": "K2P 1L4", "country": "Canada"})
}

async fn converged(
    orders: &mut OrderServiceClient<Channel>,
    user_id: &str,
    email: &str,
    expected: usize,
) -> bool {
    let reply = orders
        .list_orders(ListOrdersRequest {
            user_id: user_id.to_owned(),
            page_size: 1000,
            ..Default::default()
        })
        .await;
    match reply {
        Ok(reply) => {
            let list = reply.into_inner().orders;
            list.len() == expected
                && list
                    .iter()
                    .all(|o| o.emails.first().map(String::as_str) == Some(email))
        }
        Err(_) => false,
    }
}

/// `cpu` with the local RabbitMQ's (its Erlang VM, when one runs here) appended.
pub(crate) fn with_rabbitmq(mut cpu: Vec<(String, f64)>) -> Vec<(String, f64)> {
    let pid = std::process::Command::new("pgrep")
        .args(["-x", "beam.smp"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        });
    if let Some(pid) = pid {
        cpu.push((
            "RabbitMQ".to_owned(),
            tandem_testkit::proc::cpu_seconds(&format!("/proc/{pid}/stat")),
        ));
    }
    cpu
}

pub async fn run(s: &Settings) -> anyhow::Result<R2> {
    // P = 50: both flavors, and both relays, take part.
    let stack = Stack::start(crate::stack::Options {
        sync: true,
        ..crate::stack::Options::new(50)
    })
    .await?;
    let http = Stack::http_client()?;
    let mut users = Vec::new();
    eprintln!(
        "R2: seeding {} users with {} orders each",
        s.users, s.orders_per_user
    );
    for i in 0..s.users {
        let email = format!("lag{i}.{}@bench.example", uuid::Uuid::new_v4().simple());
        let id = stack
            .create_user(&http, &email, address("1 Seed St"))
            .await?;
        for _ in 0..s.orders_per_user {
            let order = serde_json::json!({
                "userId": id, "items": [{"itemId": "thing", "quantity": 1, "price": 9.99}],
                "emails": [email], "deliveryAddress": address("1 Seed St")
            });
            http.post(format!("{}/orders", stack.edge))
                .json(&order)
                .send()
                .await?;
        }
        users.push(id);
    }
    let channel = Channel::from_shared(format!("http://{}", stack.orders))?
        .connect()
        .await?;
    let orders = OrderServiceClient::new(channel);
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let users = Arc::new(users);
    let interval = Duration::from_secs_f64(1.0 / s.rate);
    let cpu_before = with_rabbitmq(stack.cpu_seconds());
    let started = Instant::now();
    let total = (s.rate * s.duration.as_secs_f64()) as u64;
    eprintln!("R2: {total} updates at {} /s", s.rate);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let (http, mut orders, users, histogram, failures) = (
            http.clone(),
            orders.clone(),
            users.clone(),
            histogram.clone(),
            failures.clone(),
        );
        let edge = stack.edge.clone();
        let expected = s.orders_per_user;
        let watched = i % s.sample_every == 0;
        tasks.spawn(async move {
            let user_id = &users[i as usize % users.len()];
            let email = format!("u{i}.{}@bench.example", uuid::Uuid::new_v4().simple());
            let body = serde_json::json!({"emails": [email], "deliveryAddress": address(&format!("{i} Lag Lane"))});
            let answered = http.put(format!("{edge}/users/{user_id}")).json(&body).send().await;
            if !answered.is_ok_and(|r| r.status().is_success()) {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            if !watched {
                return;
            }
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if converged(&mut orders, user_id, &email, expected).await {
                    let _ = histogram.lock().expect("no panics while recording").record(t0.elapsed().as_micros().max(1) as u64);
                    return;
                }
                tokio::time::sleep(poll_interval(t0.elapsed())).await;
            }
            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_cores = cpu_before
        .iter()
        .zip(with_rabbitmq(stack.cpu_seconds()))
        .map(|((name, b), (_, a))| (name.clone(), ((a - b) / elapsed * 100.0).round() / 100.0))
        .filter(|(_, cores)| *cores >= 0.01)
        .collect();
    let worker_lag = match &stack.worker_ops {
        Some(ops) => ScrapedHistogram::fetch(ops, "tandem_sync_sync_lag_seconds").await,
        None => None,
    };
    let relay_lag =
        ScrapedHistogram::fetch_all(&stack.user_ops, "tandem_user_outbox_publish_lag_seconds")
            .await;
    let h = histogram.lock().expect("no panics while recording");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(R2 {
        rate: s.rate,
        label: s.label.clone(),
        seconds: s.duration.as_secs_f64(),
        users: s.users,
        orders_per_user: s.orders_per_user,
        updates: total,
        sample_every: s.sample_every,
        watched: total.div_ceil(s.sample_every),
        not_converged: failures.load(std::sync::atomic::Ordering::Relaxed),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        poll_ms: POLL_MIN.as_secs_f64() * 1000.0,
        worker_mean_lag_ms: worker_lag.as_ref().and_then(ScrapedHistogram::mean_ms),
        worker_p50_le_ms: worker_lag.as_ref().and_then(|h| h.quantile_le_ms(0.5)),
        worker_p99_le_ms: worker_lag.as_ref().and_then(|h| h.quantile_le_ms(0.99)),
        relay_mean_lag_ms: relay_lag.as_ref().and_then(ScrapedHistogram::mean_ms),
        relay_p50_le_ms: relay_lag.as_ref().and_then(|h| h.quantile_le_ms(0.5)),
        relay_p99_le_ms: relay_lag.as_ref().and_then(|h| h.quantile_le_ms(0.99)),
        cpu_cores,
    })
}
