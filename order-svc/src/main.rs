use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use order_svc::{Config, OrderSvc};
use tandem_serving::listen::Listeners;
use tandem_serving::telemetry::{self, LogArgs};
use tandem_storage::StoreUrl;

/// tandem's order service (gRPC).
///
/// Under socket activation (LISTEN_FDS, as systemd sets it) the first inherited socket
/// serves gRPC and the second the ops port, in place of --listen and --ops-listen.
#[derive(Debug, Parser)]
#[command(name = "order-svc", version, about)]
struct Args {
    /// Address of the gRPC server.
    #[arg(long, env = "ORDER_SVC_LISTEN", default_value = "0.0.0.0:50053")]
    listen: SocketAddr,

    /// Address of the /metrics and /healthz HTTP server [default: the gRPC port + 1000].
    #[arg(long, env = "ORDER_SVC_OPS_LISTEN")]
    ops_listen: Option<SocketAddr>,

    /// Where orders live: sqlite://PATH or mongodb://HOST[:PORT]/[DB]?replicaSet=NAME.
    #[arg(
        long,
        env = "ORDER_STORE_URL",
        default_value = "sqlite://data/order_db.sqlite"
    )]
    store: StoreUrl,

    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = telemetry::init(&args.log, "order-svc");
    let result = run(args).await;
    telemetry.shutdown();
    tandem_serving::exit_status("order-svc", result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let service = OrderSvc::open(Config { store: args.store }).await?;
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
