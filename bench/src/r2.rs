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
    /// The rate the updates were sent at: at most [`MAX_IN_FLIGHT`] are in flight, so
    /// when the write path answers slower than the rate needs, the sending falls behind.
    #[serde(default)]
    pub sent_rate: Option<f64>,
    /// Of `not_converged`, the updates the edge did not answer with success.
    #[serde(default)]
    pub refused: u64,
    /// The PUTs' own latency, from sent to answered (before any of the sync).
    #[serde(default)]
    pub put_p99_ms: Option<f64>,
    /// What each user-svc's SQLite writer and outbox relay did over the run (v1, then
    /// v2): where a backlog builds when the sync falls behind.
    #[serde(default)]
    pub writers: Vec<WriterFigures>,
    /// The most events the outbox held at once (sampled every 200 ms).
    #[serde(default)]
    pub outbox_max_pending: Option<f64>,
}

/// One user-svc's SQLite writer and outbox relay over an R2 run, from its ops port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriterFigures {
    pub flavor: String,
    /// Transactions committed per second (each one fsync).
    pub commits_per_s: f64,
    /// Writes each commit carried, on average (PUTs, the relay's claims and deletes).
    pub writes_per_commit: f64,
    /// The most writes queued at once for the writer (sampled every 200 ms).
    pub max_queued: f64,
    /// Events this process's relay published per second.
    pub published_per_s: f64,
    /// Of those, the events handed to it as they were written (published without a
    /// claim), per second.
    #[serde(default)]
    pub handed_per_s: f64,
    /// The relay's batches: how many, and the mean ms of each step (claim, publish until
    /// confirmed, delete), from its `outbox_relay_step_seconds`.
    #[serde(default)]
    pub batches: f64,
    #[serde(default)]
    pub batch_mean: f64,
    #[serde(default)]
    pub step_ms: Vec<(String, f64)>,
}

/// The relay's steps, as `outbox_relay_step_seconds` labels them.
const RELAY_STEPS: [&str; 3] = ["claim", "confirm", "complete"];
/// The index of "confirm" in [`RELAY_STEPS`]: every batch has exactly one, so its count is
/// the number of batches.
const CONFIRM_STEP: usize = 1;

/// Samples the user-svcs' ops ports while a run lasts: counters at the start and the end,
/// the queue and outbox gauges' peaks in between.
struct WriterSampler {
    ops: Vec<String>,
    start: Vec<Counters>,
    peaks: Arc<Mutex<Vec<(f64, f64)>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, Default)]
struct Counters {
    commits: f64,
    writes: f64,
    published: f64,
    handed: f64,
    /// (sum of seconds, count) of each of [`RELAY_STEPS`].
    steps: [(f64, f64); 3],
}

impl Counters {
    fn of(page: &str) -> Counters {
        let value = |name| tandem_testkit::metric_in(page, name).unwrap_or(0.0);
        Counters {
            commits: value("tandem_user_sqlite_commits"),
            writes: value("tandem_user_sqlite_writes"),
            published: value("tandem_user_outbox_published"),
            handed: value("tandem_user_outbox_handed_over"),
            steps: RELAY_STEPS.map(|step| {
                let labelled = |part: &str| {
                    let key =
                        format!("tandem_user_outbox_relay_step_seconds_{part}{{step=\"{step}\"}} ");
                    page.lines()
                        .find_map(|l| l.strip_prefix(&key))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                (labelled("sum"), labelled("count"))
            }),
        }
    }
}

impl WriterSampler {
    async fn start(ops: &[String]) -> WriterSampler {
        let mut start = Vec::with_capacity(ops.len());
        for one in ops {
            let page = tandem_testkit::metrics_page(one).await.unwrap_or_default();
            start.push(Counters::of(&page));
        }
        let peaks = Arc::new(Mutex::new(vec![(0.0, 0.0); ops.len()]));
        // Runs until `finish` aborts it.
        let task = tokio::spawn({
            let (ops, peaks) = (ops.to_vec(), peaks.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    for (i, one) in ops.iter().enumerate() {
                        let Some(page) = tandem_testkit::metrics_page(one).await else {
                            continue;
                        };
                        let value = |name| tandem_testkit::metric_in(&page, name).unwrap_or(0.0);
                        let mut peaks = peaks.lock().expect("no panics while sampling");
                        let (queued, pending) = &mut peaks[i];
                        *queued = value("tandem_user_sqlite_writes_queued").max(*queued);
                        *pending = value("tandem_user_outbox_pending").max(*pending);
                    }
                }
            }
        });
        WriterSampler {
            ops: ops.to_vec(),
            start,
            peaks,
            task,
        }
    }

    /// Each process's figures over `seconds`, and the outbox's peak.
    async fn finish(self, seconds: f64) -> (Vec<WriterFigures>, Option<f64>) {
        self.task.abort();
        let _ = self.task.await;
        let peaks = self.peaks.lock().expect("no panics while sampling").clone();
        let mut figures = Vec::with_capacity(self.ops.len());
        for (i, one) in self.ops.iter().enumerate() {
            let Some(page) = tandem_testkit::metrics_page(one).await else {
                continue;
            };
            let (a, b) = (self.start[i], Counters::of(&page));
            let commits = b.commits - a.commits;
            figures.push(WriterFigures {
                flavor: if i == 0 { "v1" } else { "v2" }.to_owned(),
                commits_per_s: commits / seconds,
                writes_per_commit: (b.writes - a.writes) / commits.max(1.0),
                max_queued: peaks[i].0,
                published_per_s: (b.published - a.published) / seconds,
                handed_per_s: (b.handed - a.handed) / seconds,
                batches: b.steps[CONFIRM_STEP].1 - a.steps[CONFIRM_STEP].1,
                batch_mean: (b.published - a.published)
                    / (b.steps[CONFIRM_STEP].1 - a.steps[CONFIRM_STEP].1).max(1.0),
                step_ms: RELAY_STEPS
                    .iter()
                    .zip(a.steps.iter().zip(&b.steps))
                    .map(|(step, ((sum0, n0), (sum1, n1)))| {
                        let n = n1 - n0;
                        let mean = if n > 0.0 {
                            (sum1 - sum0) / n * 1000.0
                        } else {
                            0.0
                        };
                        ((*step).to_owned(), mean)
                    })
                    .collect(),
            });
        }
        // Both flavors' relays share one outbox (one file): each sees all of it.
        let pending = peaks.iter().map(|(_, p)| *p).reduce(f64::max);
        (figures, pending)
    }
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

    /// The sync kept up: p99 ≤ 100 ms, every watched update converged, and the updates
    /// went out at (within 5 % of) the rate.
    pub fn keeps_up(&self) -> bool {
        self.p99_ms <= 100.0 && self.not_converged == 0 && self.sent_short().is_none()
    }

    /// The rate the updates actually went out at, when that fell more than 5 % short of
    /// the rate asked for (the write path answered too slowly for it).
    pub fn sent_short(&self) -> Option<f64> {
        self.sent_rate.filter(|sent| *sent < 0.95 * self.rate)
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
        let text = tandem_testkit::metrics_page(ops).await?;
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

/// The most PUTs in flight at once, as the routes run's wrk at its most connections: the
/// PUT capacity an R2 rate derives from was measured this way. Without a bound, each PUT
/// waiting for an answer took a connection of its own, and a rate the write path could
/// not keep up with opened 15,000 connections to the edge (measured, bench/FINDINGS.md
/// §14), which then measured the connection storm more than the sync.
pub const MAX_IN_FLIGHT: usize = 64;

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
    let put_latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let users = Arc::new(users);
    let interval = Duration::from_secs_f64(1.0 / s.rate);
    let cpu_before = with_rabbitmq(stack.cpu_seconds());
    let sampler = WriterSampler::start(&stack.user_ops).await;
    let started = Instant::now();
    let total = (s.rate * s.duration.as_secs_f64()) as u64;
    eprintln!("R2: {total} updates at {} /s", s.rate);
    let mut tasks = tokio::task::JoinSet::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    for i in 0..total {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        // Late when all are busy; the rate actually sent shows it.
        let permit = in_flight.clone().acquire_owned().await?;
        let (http, mut orders, users, histogram, put_latency, failures, refused) = (
            http.clone(),
            orders.clone(),
            users.clone(),
            histogram.clone(),
            put_latency.clone(),
            failures.clone(),
            refused.clone(),
        );
        let edge = stack.edge.clone();
        let expected = s.orders_per_user;
        let watched = i % s.sample_every == 0;
        tasks.spawn(async move {
            let user_id = &users[i as usize % users.len()];
            let email = format!("u{i}.{}@bench.example", uuid::Uuid::new_v4().simple());
            let body = serde_json::json!({"emails": [email], "deliveryAddress": address(&format!("{i} Lag Lane"))});
            let sent = Instant::now();
            // The body read to its end, so the connection goes back to the pool.
            let answered = match http.put(format!("{edge}/users/{user_id}")).json(&body).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            drop(permit);
            if !answered {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            let _ = put_latency.lock().expect("no panics while recording").record(sent.elapsed().as_micros().max(1) as u64);
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
    let sent_rate = total as f64 / started.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let (writers, outbox_max_pending) = sampler.finish(elapsed).await;
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
        sent_rate: Some(sent_rate),
        refused: refused.load(std::sync::atomic::Ordering::Relaxed),
        put_p99_ms: {
            let h = put_latency.lock().expect("no panics while recording");
            (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0)
        },
        writers,
        outbox_max_pending,
    })
}
