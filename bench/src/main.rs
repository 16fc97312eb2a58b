//! tandem-bench: starts the stack from release binaries, loads it, and writes the figures
//! to bench/REPORT.md and bench/report.json. Run it with scripts/bench, which builds the
//! release binaries first.

mod load;
mod r1;
mod r2;
mod r3;
mod report;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "tandem-bench", about)]
struct Args {
    /// Experiments to run: r1 (the edge's cost), r2 (sync lag), r3 (ApplyUserContact
    /// at 10k vs 1M orders).
    #[arg(long, value_delimiter = ',', default_value = "r1,r2,r3")]
    only: Vec<String>,

    /// Updates per second of the sync-lag run.
    #[arg(long, default_value_t = 200.0)]
    sync_rate: f64,

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

    /// Where REPORT.md and report.json go.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds.max(1));
    let mut report = report::Report {
        machine: report::Machine::read(),
        r1: None,
        r2: None,
        r3: None,
    };
    if args.only.iter().any(|e| e == "r1") {
        let settings = r1::Settings {
            concurrency: args.concurrency,
            warmup: duration / 5,
            duration,
            rounds: args.rounds.max(1),
        };
        report.r1 = Some(r1::run(&settings).await?);
    }
    if args.only.iter().any(|e| e == "r2") {
        let settings = r2::Settings {
            rate: args.sync_rate,
            duration: duration * 3,
            users: 400,
            orders_per_user: 5,
        };
        report.r2 = Some(r2::run(&settings).await?);
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
