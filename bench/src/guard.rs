//! G1: what guarding the edge costs. `GET /users/{id}` saturated, through an open edge and
//! through one that verifies a JWT on every request and charges a rate-limit bucket per
//! client, side by side in one run: two stacks of the same binaries, runs alternating.
//! Each worker is a client of its own (its own token, `sub`, and bucket), the limit high
//! enough that nobody is refused. Bar: the guarded throughput at most 15 % lower.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_testkit::jwt::{API_SCOPES, TestKey, claims, trusting, write_jwks};

use crate::load::Measured;
use crate::migration::{Reads, Settings, saturate};
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

/// Per client: sustained 20,000/s, far above what one worker can send here.
const RATE_LIMIT: &str = "20000/s,burst=40000";

async fn seed(
    stack: &Stack,
    http: &reqwest::Client,
    token: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..500 {
        let email = format!("g{i}.{}@bench.example", uuid::Uuid::new_v4().simple());
        let address = json!({"street": "1 Main St", "city": "Ottawa", "province": "ON", "postalCode": "K2P 1L4", "country": "Canada"});
        ids.push(stack.create_user_as(http, token, &email, address).await?);
    }
    Ok(ids)
}

pub async fn run(s: &Settings) -> anyhow::Result<G1> {
    let key = TestKey::load("rsa-1");
    let dir = tempfile::tempdir()?;
    let open = Stack::start(Options::new(100)).await?;
    let mut options = Options::new(100);
    options.edge_args = trusting(&write_jwks(dir.path(), &[&key]));
    options
        .edge_args
        .extend(["--rate-limit".to_owned(), RATE_LIMIT.to_owned()]);
    let guarded = Stack::start(options).await?;

    let http = Stack::http_client()?;
    let seeder = key.sign(&claims("bench-seeder", API_SCOPES));
    let open_reads = Arc::new(Reads {
        http: http.clone(),
        edge: open.edge.clone(),
        ids: Arc::new(seed(&open, &http, None).await?),
        tokens: Vec::new(),
    });
    let guarded_reads = Arc::new(Reads {
        http: http.clone(),
        edge: guarded.edge.clone(),
        ids: Arc::new(seed(&guarded, &http, Some(&seeder)).await?),
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
