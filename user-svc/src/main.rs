use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use tandem::domain::Flavor;
use tandem_messaging::Topology;
use tandem_serving::listen::Listeners;
use tandem_serving::telemetry::{self, LogArgs};
use tandem_storage::StoreUrl;
use user_svc::{Config, RelayConfig, UserSvc};

/// tandem's user service (gRPC). Run it twice, `--flavor v1` and `--flavor v2 --listen
/// 0.0.0.0:50052`, over the same store.
///
/// Under socket activation (LISTEN_FDS, as systemd sets it) the first inherited socket
/// serves gRPC and the second the ops port, in place of --listen and --ops-listen.
#[derive(Debug, Parser)]
#[command(name = "user-svc", version, about)]
struct Args {
    /// Behavior: v1 (legacy: no timestamps, no email syntax check) or v2.
    #[arg(
        long,
        env = "USER_SVC_FLAVOR",
        default_value = "v1",
        value_parser = PossibleValuesParser::new(["v1", "v2"])
            .map(|s| s.parse::<Flavor>().expect("one of the possible values"))
    )]
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
        default_value = tandem_messaging::DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    amqp: String,

    /// How long an event stays reserved for the relay that claimed it, or was handed it
    /// as it was written: if that relay dies, another publishes the event after this.
    #[arg(long, env = "USER_SVC_OUTBOX_LEASE_SECS", default_value_t = 30)]
    outbox_lease_secs: u64,

    /// Under load, how long the relay lets a batch of events gather before publishing it
    /// (0: at once). A lone event never waits.
    #[arg(long, env = "USER_SVC_OUTBOX_LINGER_MS", default_value_t = 2)]
    outbox_linger_ms: u64,

    #[command(flatten)]
    topology: Topology,

    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = telemetry::init(&args.log, &format!("user-svc-{}", args.flavor));
    let result = run(args).await;
    telemetry.shutdown();
    tandem_serving::exit_status("user-svc", result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config {
        flavor: args.flavor,
        store: args.store,
        relay: Some(RelayConfig {
            lease: std::time::Duration::from_secs(args.outbox_lease_secs.max(1)),
            linger: std::time::Duration::from_millis(args.outbox_linger_ms),
            ..RelayConfig::new(args.amqp, args.topology)
        }),
    };
    let service = UserSvc::open(config).await?;
    let ops_addr = args
        .ops_listen
        .unwrap_or_else(|| tandem_serving::ops::default_addr(args.listen));
    let mut listeners = Listeners::from_env();
    let grpc = listeners.take_or_bind(0, args.listen).await?;
    let ops = listeners.take_or_bind(1, ops_addr).await?;
    service
        .serve(grpc, Some(ops), tandem_serving::shutdown::on_signal())
        .await?;
    Ok(())
}
