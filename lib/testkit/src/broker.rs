//! The RabbitMQ tests use: the one `AMQP_URL` (as every tandem process reads it), each
//! test's own topology, and cleaning up after it.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_messaging::Topology;

/// The broker the tests talk to: `AMQP_URL`, or the local one with the guest account.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| tandem_messaging::DEFAULT_AMQP_URL.to_owned())
}

/// `amqp://user:pass@host:port/vhost` split around its `host:port`.
fn split_authority(url: &str) -> (&str, &str, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let end = start + rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (&url[..host_start], &url[host_start..end], &url[end..])
}

/// The broker's address (for a proxy in front of it).
pub async fn broker_addr(url: &str) -> SocketAddr {
    let (_, authority, _) = split_authority(url);
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5672")
    };
    tokio::net::lookup_host(&authority)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve the broker at {authority}"))
}

/// `url` with its host and port replaced by `addr` (credentials and vhost kept).
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let (before, _, after) = split_authority(url);
    format!("{before}{addr}{after}")
}

/// A topology of names no other test uses.
pub fn unique_topology(tag: &str) -> Topology {
    Topology::prefixed(&format!("{tag}-{}", uuid::Uuid::new_v4().simple()))
}

/// Deletes a test run's exchanges and queues, and whatever messages they still hold.
/// Every test and benchmark run declares a topology of its own, durable like production's;
/// without this each run left its queues behind, and a long-lived broker collected hundreds
/// of them. Call it after the processes that redeclare the topology have stopped. Blocking
/// (it runs on a thread of its own), so `Drop` can call it; best effort, with a note on
/// stderr when the broker cannot be reached.
pub fn remove_topology(amqp_url: &str, topology: &Topology) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let name = topology.queue.clone();
    let (url, topology) = (amqp_url.to_owned(), topology.clone());
    let removal = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let work = async {
                let connection = tandem_messaging::amqp::connect(&url, "tandem-test-cleanup")
                    .await
                    .map_err(|e| e.to_string())?;
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| e.to_string())?;
                for queue in [&topology.queue, &topology.dead_letter] {
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                for exchange in [&topology.exchange, &topology.dead_letter] {
                    channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let _ = connection.close(200, "cleaned up".into()).await;
                Ok::<(), String>(())
            };
            tokio::time::timeout(Duration::from_secs(15), work)
                .await
                .map_err(|_| "the broker did not answer within 15 s".to_owned())?
        })
    });
    match removal.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("could not remove test topology {name}: {e}"),
        Err(_) => eprintln!("removing test topology {name} panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_goes_through_another_address() {
        let proxy: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            url_via("amqp://guest:guest@127.0.0.1:5672/%2f", proxy),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(url_via("amqp://rabbit", proxy), "amqp://127.0.0.1:4000");
        assert_eq!(
            url_via("amqp://u:p@rabbit:5672?heartbeat=5", proxy),
            "amqp://u:p@127.0.0.1:4000?heartbeat=5"
        );
    }
}
