//! tandem's own test and benchmark kit (never in a service build): the [`Stack`]
//! launcher, child processes, reserved ports, a chaos proxy, the store contract harness,
//! an OTLP trace receiver, sample data, and polling with a deadline instead of sleeping.

pub mod broker;
pub mod chaos;
pub mod contract;
pub mod fixtures;
pub mod http;
pub mod jwt;
pub mod otlp;
pub mod ports;
pub mod proc;
pub mod python;
pub mod stack;

use std::future::Future;
use std::time::{Duration, Instant};

pub use chaos::ChaosProxy;
pub use fixtures::*;
pub use http::{Http, Reply};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use ports::PortReservation;
pub use proc::{Proc, bin};
pub use python::PythonFlavor;
pub use stack::{ADMIN_TOKEN, Contact, Pinning, Service, Stack, StackBuilder};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connected gRPC channel to `url`.
pub async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// Waits until a gRPC server at `addr` (host:port) answers its health check with SERVING.
pub async fn wait_serving(addr: &str, timeout: Duration) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let url = format!("http://{addr}");
    eventually(timeout, &format!("{addr} to serve"), || {
        let url = url.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(url)
                .ok()?
                .connect()
                .await
                .ok()?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .ok()?;
            (reply.into_inner().status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await
}

/// The value of an unlabelled metric on an ops port, if it answers.
pub async fn metric(ops_addr: &str, name: &str) -> Option<f64> {
    metric_in(&metrics_page(ops_addr).await?, name)
}

/// An ops port's whole /metrics page, if it answers: one fetch for several values.
pub async fn metrics_page(ops_addr: &str) -> Option<String> {
    reqwest::get(format!("http://{ops_addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of an unlabelled metric (a counter by its name with or without `_total`) in
/// a /metrics page.
pub fn metric_in(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with([' ', '_']) && !l.contains('{')
        })
        .and_then(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name || key == format!("{name}_total")).then(|| value.parse().ok())?
        })
}

/// The field paths a status names in its google.rpc.BadRequest details.
pub fn fields(status: &tonic::Status) -> Vec<String> {
    tandem_serving::grpc::field_violations(status)
        .into_iter()
        .map(|v| v.field)
        .collect()
}
