use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use edge::guard::args::GuardArgs;
use edge::{AdminToken, ClusterSettings, Config, Edge, UpstreamConfig};
use tandem_serving::listen::Listeners;
use tandem_serving::telemetry::{self, LogArgs};

/// tandem's edge: the public REST API over the internal gRPC services.
///
/// Under socket activation (LISTEN_FDS, as systemd sets it) the inherited socket serves
/// HTTP, in place of --listen.
#[derive(Debug, Parser)]
#[command(name = "edge", version, about)]
struct Args {
    /// Address of the HTTP server.
    #[arg(long, env = "EDGE_LISTEN", default_value = "0.0.0.0:8000")]
    listen: SocketAddr,

    /// user-svc v1 (legacy flavor).
    #[arg(
        long = "user-v1",
        env = "USER_V1_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    user_v1: String,

    /// user-svc v2.
    #[arg(
        long = "user-v2",
        env = "USER_V2_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    user_v2: String,

    /// order-svc.
    #[arg(
        long = "orders",
        env = "ORDER_SVC_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    orders: String,

    /// The routing file, {"P": 0..100} (percent of user traffic to v1); P = 100 when absent.
    #[arg(long, env = "ROUTING_CONFIG", default_value = "routing.json")]
    routing_config: PathBuf,

    /// Bearer token of /admin/*; the admin API is off when unset.
    #[arg(long, env = "EDGE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Deadline of each call to a service, in milliseconds.
    #[arg(long, env = "EDGE_UPSTREAM_TIMEOUT_MS", default_value_t = 5000)]
    upstream_timeout_ms: u64,

    /// Longest a whole request may take, reading a slow client's body included, in ms.
    #[arg(long, env = "EDGE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    request_timeout_ms: u64,

    /// Share the dial, the shadow settings and the rollout with the other edges started
    /// with this cluster name (through RabbitMQ at --amqp); unset, this edge is alone.
    #[arg(long, env = "EDGE_CLUSTER")]
    cluster: Option<String>,

    /// RabbitMQ, through which the edges of a cluster talk.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp: String,

    /// How often the routing file is checked for changes, in milliseconds.
    #[arg(long, env = "ROUTING_POLL_MS", default_value_t = 1000)]
    routing_poll_ms: u64,

    #[command(flatten)]
    guard: GuardArgs,

    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = telemetry::init(&args.log, "edge");
    let result = run(args).await;
    telemetry.shutdown();
    tandem_serving::exit_status("edge", result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let protection = args.guard.into_config();
    let config = Config {
        upstreams: UpstreamConfig {
            user_v1: args.user_v1,
            user_v2: args.user_v2,
            orders: args.orders,
            timeout: Duration::from_millis(args.upstream_timeout_ms.max(1)),
        },
        routing_file: args.routing_config,
        routing_poll: Duration::from_millis(args.routing_poll_ms.max(10)),
        admin_token: args.admin_token.and_then(AdminToken::new),
        request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
        cluster: args.cluster.map(|name| ClusterSettings {
            amqp_url: args.amqp,
            name,
        }),
        guard: protection.guard,
        tls: protection.tls,
        ejection: protection.ejection,
    };
    let edge = Edge::new(config).await?;
    let listener = Listeners::from_env().take_or_bind(0, args.listen).await?;
    edge.serve(listener, tandem_serving::shutdown::on_signal())
        .await?;
    Ok(())
}
