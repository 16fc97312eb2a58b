//! R1: what the edge costs. The same calls, from the same load generator in the same run:
//! REST through the edge, and gRPC straight to user-svc. Bars: throughput ratio ≥ 0.75,
//! and at half load, p99 added by the edge ≤ 1 ms.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem::proto::common::v1::Address;
use tandem::proto::user::v1::user_service_client::UserServiceClient;
use tandem::proto::user::v1::{CreateUserRequest, GetUserRequest};
use tonic::transport::Channel;

use crate::load::{Measured, closed_loop, open_loop};
use crate::stack::Stack;

/// One saturation round: gRPC then REST, back to back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaturationRound {
    pub grpc: Measured,
    pub rest: Measured,
    /// REST throughput / gRPC throughput.
    pub ratio: f64,
    /// CPU microseconds each process spent per request, in each run.
    pub grpc_cpu_us: Vec<(String, f64)>,
    pub rest_cpu_us: Vec<(String, f64)>,
}

/// CPU µs per request of each process over a run (warm-up included, so the request
/// count is scaled up by the run's full length).
fn cpu_per_request(
    before: &[(String, f64)],
    after: &[(String, f64)],
    m: &Measured,
    s: &Settings,
) -> Vec<(String, f64)> {
    let whole = (s.warmup + s.duration).as_secs_f64() / s.duration.as_secs_f64();
    let requests = m.requests as f64 * whole;
    before
        .iter()
        .zip(after)
        .map(|((name, b), (_, a))| {
            (
                name.clone(),
                ((a - b) * 1e6 / requests.max(1.0) * 10.0).round() / 10.0,
            )
        })
        .filter(|(_, us)| *us > 0.0)
        .collect()
}

/// One half-load round: gRPC then REST at the same request rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HalfLoadRound {
    pub grpc: Measured,
    pub rest: Measured,
    /// p99 through the edge minus p99 straight over gRPC.
    pub added_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub call: String,
    pub saturation: Vec<SaturationRound>,
    /// Median over the rounds (this machine's speed drifts between runs, so rounds
    /// alternate and the median is the figure).
    pub throughput_ratio: f64,
    /// Requests per second of the half-load runs: half of the median REST maximum.
    pub half_load_rate: f64,
    pub half_load: Vec<HalfLoadRound>,
    /// Median over the rounds.
    pub added_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct R1 {
    pub pin: Option<crate::stack::Pinning>,
    pub concurrency: usize,
    pub seconds: f64,
    pub rounds: usize,
    pub comparisons: Vec<Comparison>,
}

pub struct Settings {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub rounds: usize,
    /// The edge on a CPU of its own, everything else (the load generator included) on
    /// another.
    pub pin: Option<crate::stack::Pinning>,
    /// Only the read comparison (GET vs GetUser).
    pub reads_only: bool,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn address() -> Address {
    Address {
        street: "456 Elm Avenue".into(),
        city: "Ottawa".into(),
        province: "ON".into(),
        postal_code: "K2P 1L4".into(),
        country: "Canada".into(),
    }
}

fn rest_user(email: &str) -> String {
    serde_json::json!({
        "emails": [email],
        "deliveryAddress": {"street": "456 Elm Avenue", "city": "Ottawa", "province": "ON", "postalCode": "K2P 1L4", "country": "Canada"}
    })
    .to_string()
}

fn email(tag: &str) -> String {
    format!("{tag}.{}@bench.example", uuid::Uuid::new_v4().simple())
}

/// Which call a comparison runs, on each side.
#[derive(Clone, Copy)]
enum Call {
    GetUser,
    CreateUser,
}

#[derive(Clone)]
struct Clients {
    grpc: UserServiceClient<Channel>,
    http: reqwest::Client,
    edge: String,
    ids: Arc<Vec<String>>,
}

impl Clients {
    async fn grpc(&self, call: Call, i: u64) -> bool {
        let mut client = self.grpc.clone();
        match call {
            Call::GetUser => {
                let id = self.ids[(i as usize * 7919) % self.ids.len()].clone();
                client
                    .get_user(GetUserRequest { user_id: id })
                    .await
                    .is_ok()
            }
            Call::CreateUser => client
                .create_user(CreateUserRequest {
                    emails: vec![email("g")],
                    delivery_address: Some(address()),
                    ..Default::default()
                })
                .await
                .is_ok(),
        }
    }

    async fn rest(&self, call: Call, i: u64) -> bool {
        let request = match call {
            Call::GetUser => {
                let id = &self.ids[(i as usize * 7919) % self.ids.len()];
                self.http.get(format!("{}/users/{id}", self.edge))
            }
            Call::CreateUser => self
                .http
                .post(format!("{}/users", self.edge))
                .header("content-type", "application/json")
                .body(rest_user(&email("r"))),
        };
        match request.send().await {
            Ok(response) => {
                let ok = response.status().is_success();
                ok && response.bytes().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

async fn saturate(clients: &Clients, call: Call, grpc: bool, s: &Settings) -> Measured {
    let c = clients.clone();
    closed_loop(s.concurrency, s.warmup, s.duration, move |w, i| {
        let c = c.clone();
        async move {
            let n = i * 1000 + w as u64;
            if grpc {
                c.grpc(call, n).await
            } else {
                c.rest(call, n).await
            }
        }
    })
    .await
}

async fn steady(clients: &Clients, call: Call, grpc: bool, rate: f64, s: &Settings) -> Measured {
    let c = clients.clone();
    open_loop(rate, s.concurrency * 8, s.warmup, s.duration, move |i| {
        let c = c.clone();
        async move {
            if grpc {
                c.grpc(call, i).await
            } else {
                c.rest(call, i).await
            }
        }
    })
    .await
}

async fn compare(
    stack: &Stack,
    clients: &Clients,
    call: Call,
    name: &str,
    s: &Settings,
) -> Comparison {
    let mut saturation = Vec::new();
    for round in 1..=s.rounds {
        eprintln!("R1: {name}: saturation round {round}/{}", s.rounds);
        let t0 = stack.cpu_seconds();
        let grpc = saturate(clients, call, true, s).await;
        let t1 = stack.cpu_seconds();
        let rest = saturate(clients, call, false, s).await;
        let t2 = stack.cpu_seconds();
        let ratio = rest.throughput / grpc.throughput;
        saturation.push(SaturationRound {
            grpc_cpu_us: cpu_per_request(&t0, &t1, &grpc, s),
            rest_cpu_us: cpu_per_request(&t1, &t2, &rest, s),
            grpc,
            rest,
            ratio,
        });
    }
    let half_load_rate = median(saturation.iter().map(|r| r.rest.throughput).collect()) / 2.0;
    let mut half_load = Vec::new();
    for round in 1..=s.rounds {
        eprintln!("R1: {name}: half-load round {round}/{}", s.rounds);
        let grpc = steady(clients, call, true, half_load_rate, s).await;
        let rest = steady(clients, call, false, half_load_rate, s).await;
        let added_p99_ms = rest.p99_ms - grpc.p99_ms;
        half_load.push(HalfLoadRound {
            grpc,
            rest,
            added_p99_ms,
        });
    }
    Comparison {
        call: name.to_owned(),
        throughput_ratio: median(saturation.iter().map(|r| r.ratio).collect()),
        added_p99_ms: median(half_load.iter().map(|r| r.added_p99_ms).collect()),
        saturation,
        half_load_rate,
        half_load,
    }
}

pub async fn run(settings: &Settings) -> anyhow::Result<R1> {
    // P = 100: the edge sends every user call to v1, the flavor gRPC is compared with.
    let stack = Stack::start(crate::stack::Options {
        pin: settings.pin,
        ..crate::stack::Options::new(100)
    })
    .await?;
    if let Some(pin) = settings.pin {
        crate::stack::pin_self(pin.others_cpu)?;
    }
    let channel = Channel::from_shared(format!("http://{}", stack.user_v1))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut grpc = UserServiceClient::new(channel);
    let mut ids = Vec::new();
    for _ in 0..1000 {
        let reply = grpc
            .create_user(CreateUserRequest {
                emails: vec![email("seed")],
                delivery_address: Some(address()),
                ..Default::default()
            })
            .await?;
        ids.push(
            reply
                .into_inner()
                .user
                .map(|u| u.user_id)
                .unwrap_or_default(),
        );
    }
    let clients = Clients {
        grpc,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(settings.concurrency * 2)
            .tcp_nodelay(true)
            .build()?,
        edge: stack.edge.clone(),
        ids: Arc::new(ids),
    };
    let mut comparisons = Vec::new();
    let calls = [
        (Call::GetUser, "GET /users/{id} vs GetUser"),
        (Call::CreateUser, "POST /users vs CreateUser"),
    ];
    let calls = if settings.reads_only {
        &calls[..1]
    } else {
        &calls[..]
    };
    for &(call, name) in calls {
        comparisons.push(compare(&stack, &clients, call, name, settings).await);
    }
    drop(stack);
    if settings.pin.is_some() {
        // Back on every CPU for whatever runs next.
        let mut all = nix::sched::CpuSet::new();
        for cpu in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
            all.set(cpu)?;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all)?;
    }
    Ok(R1 {
        pin: settings.pin,
        concurrency: settings.concurrency,
        seconds: settings.duration.as_secs_f64(),
        rounds: settings.rounds,
        comparisons,
    })
}
