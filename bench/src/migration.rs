//! M1: what migration control costs the reads it watches, side by side in one run over one
//! stack and one set of users (P = 50, so both flavors serve and each shadow call goes to
//! the flavor that did not, and where the answers differ again to the one that did):
//! - shadowing: `GET /users/{id}` at half load with shadowing off, then at a fraction of
//!   0.1, alternating (bar: p99 added ≤ 1 ms);
//! - analysis: saturated reads with no rollout, then with a rollout whose analysis judges
//!   a window every second (it holds, inconclusive, so P stays put), alternating (bar:
//!   throughput unchanged within the rounds' own spread);
//! - the edge's resident memory before and after.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::load::{Measured, closed_loop, open_loop};
use crate::r1::median;
use crate::stack::Stack;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowRound {
    pub off: Measured,
    pub on: Measured,
    /// p99 with shadowing on minus p99 with it off.
    pub added_p99_ms: f64,
    /// Shadow reads compared and dropped during the `on` run.
    pub compared: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnalysisRound {
    pub idle: Measured,
    pub judging: Measured,
    /// judging / idle throughput.
    pub ratio: f64,
    /// Windows the analysis judged during the `judging` run.
    pub checks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct M1 {
    pub concurrency: usize,
    pub seconds: f64,
    pub rounds: usize,
    pub fraction: f64,
    pub half_load_rate: f64,
    pub shadow: Vec<ShadowRound>,
    pub added_p99_ms: f64,
    pub analysis: Vec<AnalysisRound>,
    pub analysis_ratio: f64,
    /// Lowest and highest ratio of two idle runs of neighbouring rounds: the noise the
    /// analysis ratio is read against.
    pub idle_spread: (f64, f64),
    /// The edge's resident MiB after seeding, and after every run.
    pub edge_mib: (f64, f64),
}

pub struct Settings {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub rounds: usize,
}

const FRACTION: f64 = 0.1;

/// `GET /users/{id}` over a set of users, each worker with its own bearer token when
/// `tokens` has them (G1's guarded edge).
pub(crate) struct Reads {
    pub http: reqwest::Client,
    pub edge: String,
    pub ids: Arc<Vec<String>>,
    /// One `Authorization` value per worker; empty for an open edge.
    pub tokens: Vec<String>,
}

impl Reads {
    async fn get(&self, worker: usize, i: u64) -> bool {
        let id = &self.ids[(i as usize * 7919) % self.ids.len()];
        let mut request = self.http.get(format!("{}/users/{id}", self.edge));
        if let Some(token) = self.tokens.get(worker) {
            request = request.header("authorization", token);
        }
        match request.send().await {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        }
    }
}

pub(crate) async fn saturate(reads: &Arc<Reads>, s: &Settings) -> Measured {
    let reads = reads.clone();
    closed_loop(s.concurrency, s.warmup, s.duration, move |w, i| {
        let reads = reads.clone();
        async move { reads.get(w, i * 1000 + w as u64).await }
    })
    .await
}

async fn steady(reads: &Arc<Reads>, rate: f64, s: &Settings) -> Measured {
    let reads = reads.clone();
    open_loop(rate, s.concurrency * 8, s.warmup, s.duration, move |i| {
        let reads = reads.clone();
        async move { reads.get(0, i).await }
    })
    .await
}

fn edge_mib(stack: &Stack) -> f64 {
    stack
        .memory_mib()
        .into_iter()
        .find(|(name, _)| name == "edge")
        .map_or(f64::NAN, |(_, mib)| mib)
}

pub async fn run(s: &Settings) -> anyhow::Result<M1> {
    let stack = Stack::start(crate::stack::Options::new(50)).await?;
    let http = Stack::http_client()?;
    let mut ids = Vec::new();
    for i in 0..1000 {
        let email = format!("m{i}.{}@bench.example", uuid::Uuid::new_v4().simple());
        let address = json!({"street": "1 Main St", "city": "Ottawa", "province": "ON", "postalCode": "K2P 1L4", "country": "Canada"});
        ids.push(stack.create_user(&http, &email, address).await?);
    }
    let reads = Arc::new(Reads {
        http: http.clone(),
        edge: stack.edge.clone(),
        ids: Arc::new(ids),
        tokens: Vec::new(),
    });
    let mib_before = edge_mib(&stack);

    // The analysis: the same saturated reads at P = 49, with and without a rollout
    // holding that step and judging a window every second.
    let mut analysis = Vec::new();
    for round in 1..=s.rounds {
        eprintln!("M1: analysis round {round}/{}", s.rounds);
        stack
            .admin(&http, "PUT", "/admin/routing", json!({"P": 49}))
            .await?;
        let idle = saturate(&reads, s).await;
        stack
            .admin(&http, "PUT", "/admin/routing", json!({"P": 50}))
            .await?;
        stack
            .admin(
                &http,
                "PUT",
                "/admin/rollout",
                json!({"steps": [49], "intervalSeconds": 1, "minRequests": 1_000_000_000}),
            )
            .await?;
        let judging = saturate(&reads, s).await;
        let rollout = stack
            .admin(&http, "GET", "/admin/rollout", Value::Null)
            .await?;
        stack
            .admin(&http, "POST", "/admin/rollout/abort", Value::Null)
            .await?;
        analysis.push(AnalysisRound {
            ratio: judging.throughput / idle.throughput,
            checks: rollout["inconclusiveChecks"].as_u64().unwrap_or(0),
            idle,
            judging,
        });
    }
    let idle_ratios: Vec<f64> = analysis
        .windows(2)
        .map(|w| w[1].idle.throughput / w[0].idle.throughput)
        .collect();
    let idle_spread = (
        idle_ratios.iter().copied().fold(f64::INFINITY, f64::min),
        idle_ratios
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max),
    );

    // Shadowing: half of the idle maximum, off then on.
    let half_load_rate = median(analysis.iter().map(|r| r.idle.throughput).collect()) / 2.0;
    let mut shadow = Vec::new();
    for round in 1..=s.rounds {
        eprintln!("M1: shadow round {round}/{}", s.rounds);
        stack
            .admin(&http, "PUT", "/admin/shadow", json!({"fraction": 0}))
            .await?;
        let off = steady(&reads, half_load_rate, s).await;
        let before = stack
            .admin(&http, "GET", "/admin/shadow", Value::Null)
            .await?;
        stack
            .admin(&http, "PUT", "/admin/shadow", json!({"fraction": FRACTION}))
            .await?;
        let on = steady(&reads, half_load_rate, s).await;
        let after = stack
            .admin(&http, "GET", "/admin/shadow", Value::Null)
            .await?;
        let delta =
            |key: &str| after[key].as_u64().unwrap_or(0) - before[key].as_u64().unwrap_or(0);
        shadow.push(ShadowRound {
            added_p99_ms: on.p99_ms - off.p99_ms,
            compared: delta("compared"),
            dropped: delta("dropped"),
            off,
            on,
        });
    }
    stack
        .admin(&http, "PUT", "/admin/shadow", json!({"fraction": 0}))
        .await?;
    Ok(M1 {
        concurrency: s.concurrency,
        seconds: s.duration.as_secs_f64(),
        rounds: s.rounds,
        fraction: FRACTION,
        half_load_rate,
        added_p99_ms: median(shadow.iter().map(|r| r.added_p99_ms).collect()),
        shadow,
        analysis_ratio: median(analysis.iter().map(|r| r.ratio).collect()),
        analysis,
        idle_spread,
        edge_mib: (mib_before, edge_mib(&stack)),
    })
}
