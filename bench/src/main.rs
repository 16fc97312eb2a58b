//! tandem-bench: starts the stack from release binaries, loads it, and writes the figures
//! to bench/REPORT.md and bench/report.json. Run it with scripts/bench, which builds the
//! release binaries first.

mod guard;
mod lists;
mod load;
mod migration;
mod r1;
mod r2;
mod r3;
mod report;
mod routes;
mod soak;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "tandem-bench", about)]
struct Args {
    /// Experiments to run: r1 (the edge's cost, also with the edge on a CPU of its own),
    /// r2 (sync lag), r3 (ApplyUserContact at 10k vs 1M orders), routes (every REST route
    /// under wrk), m1 (what shadow reads and the rollout analysis cost), soak (memory
    /// over a long steady load, shadowing on), g1 (what JWT verification and rate
    /// limiting cost), l1 (a page of 50 delivered orders under wrk). r2 runs after
    /// routes, whose PUT capacity sets its last rate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "r1,routes,r2,l1,r3,m1,g1,soak"
    )]
    only: Vec<String>,

    /// Minutes of the soak (past 15, the edge holds its full 15 minutes of stats).
    #[arg(long, default_value_t = 16.0)]
    soak_minutes: f64,

    /// Connection counts of the per-route runs.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    route_connections: Vec<usize>,

    /// Updates per second of the sync-lag runs, in order; `capacity` is 80 % of the PUT
    /// capacity the routes run took (this run's, or the report's when only r2 runs).
    #[arg(long, value_delimiter = ',', default_value = "200,400,1000,capacity")]
    sync_rates: Vec<String>,

    /// The sync-lag run watches one update in this many until its orders show it.
    #[arg(long, default_value_t = 10)]
    sync_sample: u64,

    /// Total orders of the R3 runs.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    r3_sizes: Vec<usize>,

    /// Seconds each measured run lasts (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 10)]
    seconds: u64,

    /// Rounds of each comparison (runs alternate; the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Concurrent workers of the saturation runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,

    /// Run only the experiments of --only and put their figures into the existing
    /// report.json in --out (the others stay as they were), noting the rerun and this
    /// reason in the report.
    #[arg(long, value_name = "WHY")]
    update: Option<String>,

    /// Where REPORT.md and report.json go.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds.max(1));
    let mut report = match &args.update {
        Some(why) => {
            let path = args.out.join("report.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("--update needs {}: {e}", path.display()))?;
            let mut report: report::Report = serde_json::from_str(&text)?;
            let now = report::Machine::read();
            report.reruns.push(report::Rerun {
                experiments: args.only.clone(),
                date: now.date,
                commit: now.commit,
                why: why.clone(),
            });
            report
        }
        None => report::Report {
            machine: report::Machine::read(),
            r1: None,
            r1_pinned: None,
            r2: Vec::new(),
            r3: None,
            routes: None,
            m1: None,
            g1: None,
            l1: None,
            soak: None,
            reruns: Vec::new(),
        },
    };
    if args.only.iter().any(|e| e == "r1") {
        let settings = r1::Settings {
            concurrency: args.concurrency,
            warmup: duration / 5,
            duration,
            rounds: args.rounds.max(1),
            pin: None,
            reads_only: false,
        };
        report.r1 = Some(r1::run(&settings).await?);
        if report.machine.cores >= 2 {
            let pinned = r1::Settings {
                pin: Some(stack::Pinning {
                    edge_cpu: 1,
                    others_cpu: 0,
                }),
                reads_only: true,
                ..settings
            };
            report.r1_pinned = Some(r1::run(&pinned).await?);
        }
    }
    if args.only.iter().any(|e| e == "routes") {
        report.routes = Some(routes::run(&args.route_connections, duration).await?);
    }
    if args.only.iter().any(|e| e == "r2") {
        report.r2.clear();
        let capacity = report
            .routes
            .as_ref()
            .and_then(routes::Routes::put_capacity);
        let mut rates: Vec<(f64, Option<String>)> = Vec::new();
        for rate in &args.sync_rates {
            match (rate.as_str(), capacity) {
                ("capacity", Some(capacity)) => rates.push((
                    (capacity * 0.8).round(),
                    Some(format!(
                        "80 % of the {capacity:.0} PUT /users/{{id}} per second the routes run took"
                    )),
                )),
                ("capacity", None) => {
                    eprintln!("R2: no routes figures, so no run at 80 % of the PUT capacity")
                }
                (number, _) => match number.parse::<f64>() {
                    Ok(r) if r > 0.0 => rates.push((r, None)),
                    _ => anyhow::bail!(
                        "--sync-rates: {number:?} is neither a positive number nor `capacity`"
                    ),
                },
            }
        }
        for (rate, label) in rates {
            let settings = r2::Settings {
                rate,
                label,
                duration: duration * 3,
                users: 400,
                orders_per_user: 5,
                sample_every: args.sync_sample.max(1),
            };
            report.r2.push(r2::run(&settings).await?);
        }
    }
    if args.only.iter().any(|e| e == "l1") {
        report.l1 = Some(lists::run(duration).await?);
    }
    if args.only.iter().any(|e| e == "m1") {
        let settings = migration::Settings {
            concurrency: args.concurrency,
            warmup: duration / 5,
            duration,
            rounds: args.rounds.max(2),
        };
        report.m1 = Some(migration::run(&settings).await?);
    }
    if args.only.iter().any(|e| e == "g1") {
        let settings = migration::Settings {
            concurrency: args.concurrency,
            warmup: duration / 5,
            duration,
            rounds: args.rounds.max(2),
        };
        report.g1 = Some(guard::run(&settings).await?);
    }
    if args.only.iter().any(|e| e == "soak") {
        report.soak = Some(soak::run(args.soak_minutes, 300.0).await?);
    }
    if args.only.iter().any(|e| e == "r3") {
        report.r3 = Some(r3::run(&args.r3_sizes, 30).await?);
    }
    std::fs::create_dir_all(&args.out)?;
    let markdown = report.markdown();
    std::fs::write(args.out.join("REPORT.md"), &markdown)?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    println!("{markdown}");
    Ok(())
}
