use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tandem_messaging::amqp::Topology;
use tandem_serving::telemetry::{self, LogArgs};
use tandem_storage::StoreUrl;
use user_svc::{Config, Flavor, RelayConfig, UserSvc};

/// tandem's user service (gRPC). Run it twice, `--flavor v1` and `--flavor v2 --listen
/// 0.0.0.0:50052`, over the same store.
#[derive(Debug, Parser)]
#[command(name = "user-svc", version, about)]
struct Args {
    /// Behavior: v1 (legacy: no timestamps, no email syntax check) or v2.
    #[arg(long, env = "USER_SVC_FLAVOR", value_enum, default_value_t = Flavor::V1)]
    flavor: Flavor,

    /// Address of the gRPC server.
    #[arg(long, env = "USER_SVC_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,

    /// Address of the /metrics and /healthz HTTP server [default: the gRPC port + 1000].
    #[arg(long, env = "USER_SVC_OPS_LISTEN")]
    ops_listen: Option<SocketAddr>,

    /// Where users live: sqlite://PATH or mongodb://HOST[:PORT]/[DB]?replicaSet=NAME.
    #[arg(
        long,
        env = "USER_STORE_URL",
        default_value = "sqlite://data/user_db.sqlite"
    )]
    store: StoreUrl,

    /// RabbitMQ, where the outbox relay publishes user.updated events.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = tandem_messaging::amqp::DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    amqp: String,

    #[command(flatten)]
    topology: Topology,

    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(&args.log);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("user-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config {
        flavor: args.flavor,
        store: args.store,
        relay: Some(RelayConfig::new(args.amqp, args.topology)),
    };
    let service = UserSvc::open(config).await?;
    let ops_addr = args
        .ops_listen
        .unwrap_or_else(|| tandem_serving::ops::default_addr(args.listen));
    let grpc = tandem_serving::ops::bind(args.listen).await?;
    let ops = tandem_serving::ops::bind(ops_addr).await?;
    service
        .serve(grpc, Some(ops), tandem_serving::shutdown::on_signal())
        .await?;
    Ok(())
}
