//! tandem-bench: starts the stack from release binaries, loads it, and writes the figures
//! to bench/REPORT.md and bench/report.json. Run it with scripts/bench, which builds the
//! release binaries first.

mod load;
mod r1;
mod report;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "tandem-bench", about)]
struct Args {
    /// Experiments to run: r1 (the edge's cost).
    #[arg(long, value_delimiter = ',', default_value = "r1")]
    only: Vec<String>,

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
