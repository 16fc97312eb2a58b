use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sync_worker::{Config, Worker, dlq};
use tandem_messaging::Topology;
use tandem_serving::listen::Listeners;
use tandem_serving::telemetry::{self, LogArgs};

/// tandem's contact sync: applies user.updated events to the user's orders.
///
/// Under socket activation (LISTEN_FDS, as systemd sets it) the inherited socket serves
/// the ops port, in place of --ops-listen.
#[derive(Debug, Parser)]
#[command(name = "sync-worker", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// RabbitMQ.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = tandem_messaging::DEFAULT_AMQP_URL,
        hide_env_values = true,
        global = true
    )]
    amqp: String,

    #[command(flatten)]
    topology: Topology,

    /// order-svc, whose ApplyUserContacts applies each batch of events.
    #[arg(long, env = "ORDER_SVC_URL", default_value = "http://127.0.0.1:50053")]
    orders: String,

    /// Deliveries in hand at once (AMQP prefetch).
    #[arg(long, env = "SYNC_PREFETCH", default_value_t = 256)]
    prefetch: u16,

    /// Most events applied in one ApplyUserContacts call (1 to 1000).
    #[arg(long, env = "SYNC_BATCH", default_value_t = 128,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: u16,

    /// How long one event may keep failing before it is dead-lettered, in seconds
    /// (permanent refusals are dead-lettered at once).
    #[arg(long, env = "SYNC_RETRY_BUDGET_SECS", default_value_t = sync_worker::DEFAULT_RETRY_BUDGET.as_secs())]
    retry_budget_secs: u64,

    /// Address of the /metrics and /healthz HTTP server.
    #[arg(long, env = "SYNC_WORKER_OPS_LISTEN", default_value = "0.0.0.0:51054")]
    ops_listen: SocketAddr,

    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume events (what the worker does without a command).
    Run,
    /// The dead-letter queue: events that could not be applied.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// Show dead letters and why they are there; they stay in the queue.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to the events exchange (after fixing their cause).
    Replay {
        /// Replay at most this many.
        #[arg(long, default_value_t = usize::MAX)]
        limit: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The DLQ commands answer on standard output (`--json` lines a script reads); their
    // logs go to standard error, so none lands among the answer's lines.
    let output = match args.command {
        Some(Command::Dlq { .. }) => telemetry::LogOutput::Stderr,
        None | Some(Command::Run) => telemetry::LogOutput::Stdout,
    };
    let telemetry = telemetry::init_to(&args.log, "sync-worker", output);
    let result = run(args).await;
    telemetry.shutdown();
    tandem_serving::exit_status("sync-worker", result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        None | Some(Command::Run) => {
            let mut config = Config::new(args.amqp, args.orders, args.topology);
            config.prefetch = args.prefetch.max(1);
            config.batch = usize::from(args.batch);
            config.retry_budget = std::time::Duration::from_secs(args.retry_budget_secs);
            let worker = Worker::new(config)?;
            let ops = Listeners::from_env()
                .take_or_bind(0, args.ops_listen)
                .await?;
            worker
                .run(Some(ops), tandem_serving::shutdown::on_signal())
                .await?;
        }
        Some(Command::Dlq {
            action: DlqAction::List { limit, json },
        }) => {
            let letters = dlq::list(&args.amqp, &args.topology, limit).await?;
            for (i, letter) in letters.iter().enumerate() {
                if json {
                    println!("{}", serde_json::to_string(letter)?);
                } else {
                    println!(
                        "{}. message {} at {}\n   reason: {}\n   request: {}\n   body: {}",
                        i + 1,
                        letter.message_id.as_deref().unwrap_or("-"),
                        letter.dead_lettered_at.as_deref().unwrap_or("-"),
                        letter.reason,
                        letter.request_id.as_deref().unwrap_or("-"),
                        letter.body
                    );
                }
            }
            if !json {
                println!(
                    "{} dead letter(s) in {}",
                    letters.len(),
                    args.topology.dead_letter
                );
            }
        }
        Some(Command::Dlq {
            action: DlqAction::Replay { limit },
        }) => {
            let replayed = dlq::replay(&args.amqp, &args.topology, limit).await?;
            println!(
                "replayed {replayed} dead letter(s) to {}",
                args.topology.exchange
            );
        }
    }
    Ok(())
}
