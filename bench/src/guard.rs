//! G1: what guarding the edge costs. `GET /users/{id}` saturated, through an open edge and
//! through one that verifies a JWT on every request and charges a rate-limit bucket per
//! client, side by side in one run: two stacks of the same binaries, runs alternating.
//! Each worker is a client of its own (its own token, `sub`, and bucket), the limit high
//! enough that nobody is refused. Bar: the guarded throughput at most 15 % lower.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_testkit::jwt::{API_SCOPES, AUDIENCE, ISSUER, TestKey, claims, jwks};

use crate::load::{Measured, closed_loop};
use crate::r1::median;
use crate::stack::{Options, Stack};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuardRound {
    pub open: Measured,
    pub guarded: Measured,
    /// guarded / open throughput.
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct G1 {
    pub concurrency: usize,
    pub seconds: f64,
    pub rate_limit: String,
    pub algorithm: String,
    pub rounds: Vec<GuardRound>,
    pub ratio: f64,
    /// Requests the guarded edge refused (must be 0: the limit is not the subject).
    pub refused: u64,
}

pub struct Settings {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub rounds: usize,
}

/// Per client: sustained 20,000/s, far above what one worker can send here.
const RATE_LIMIT: &str = "20000/s,burst=40000";

struct Reads {
    http: reqwest::Client,
    edge: String,
    ids: Vec<String>,
    /// One `Authorization` value per worker; empty for the open edge.
    tokens: Vec<String>,
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

async fn saturate(reads: &Arc<Reads>, s: &Settings) -> Measured {
    let reads = reads.clone();
    closed_loop(s.concurrency, s.warmup, s.duration, move |w, i| {
        let reads = reads.clone();
        async move { reads.get(w, i).await }
    })
    .await
}

async fn seed(
    stack: &Stack,
    http: &reqwest::Client,
    token: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..500 {
        let email = format!("g{i}.{}@bench.example", uuid::Uuid::new_v4().simple());
        let body = json!({"emails": [email], "deliveryAddress": {"street": "1 Main St", "city": "Ottawa", "province": "ON", "postalCode": "K2P 1L4", "country": "Canada"}});
        let mut request = http.post(format!("{}/users", stack.edge)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply: serde_json::Value = request.send().await?.json().await?;
        ids.push(
            reply["user"]["userId"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("creating a user failed: {reply}"))?
                .to_owned(),
        );
    }
    Ok(ids)
}

pub async fn run(s: &Settings) -> anyhow::Result<G1> {
    let key = TestKey::load("rsa-1");
    let dir = tempfile::tempdir()?;
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key]).to_string())?;
    let jwks_arg = jwks_path.display().to_string();

    let open = Stack::start(Options::new(100)).await?;
    let mut options = Options::new(100);
    options.edge_args = [
        "--jwks",
        &jwks_arg,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--rate-limit",
        RATE_LIMIT,
    ]
    .map(str::to_owned)
    .to_vec();
    let guarded = Stack::start(options).await?;

    let http = Stack::http_client()?;
    let seeder = key.sign(&claims("bench-seeder", API_SCOPES));
    let open_reads = Arc::new(Reads {
        http: http.clone(),
        edge: open.edge.clone(),
        ids: seed(&open, &http, None).await?,
        tokens: Vec::new(),
    });
    let guarded_reads = Arc::new(Reads {
        http: http.clone(),
        edge: guarded.edge.clone(),
        ids: seed(&guarded, &http, Some(&seeder)).await?,
        tokens: (0..s.concurrency)
            .map(|w| {
                format!(
                    "Bearer {}",
                    key.sign(&claims(&format!("client-{w}"), API_SCOPES))
                )
            })
            .collect(),
    });

    let mut rounds = Vec::new();
    let mut refused = 0;
    for round in 1..=s.rounds {
        eprintln!("G1: round {round}/{}", s.rounds);
        let open_run = saturate(&open_reads, s).await;
        let guarded_run = saturate(&guarded_reads, s).await;
        refused += guarded_run.errors;
        rounds.push(GuardRound {
            ratio: guarded_run.throughput / open_run.throughput,
            open: open_run,
            guarded: guarded_run,
        });
    }
    Ok(G1 {
        concurrency: s.concurrency,
        seconds: s.duration.as_secs_f64(),
        rate_limit: RATE_LIMIT.to_owned(),
        algorithm: "RS256 (2048-bit)".to_owned(),
        ratio: median(rounds.iter().map(|r| r.ratio).collect()),
        rounds,
        refused,
    })
}
