//! The gRPC side of the edge: one shared channel per upstream (made once; tonic channels
//! multiplex and reconnect), a deadline on every call, the request id in metadata, and
//! failover between user flavors for calls that never left the edge.

use std::future::Future;
use std::time::{Duration, Instant};

use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem::proto::user::v1::user_service_client::UserServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use std::sync::Arc;

use tandem::domain::Flavor;
use tandem::proto::user::v1 as pb;

use crate::breaker::Breakers;
use crate::control::stats::Recorder;
use crate::metrics::{EdgeMetrics, slot};

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub user_v1: String,
    pub user_v2: String,
    pub orders: String,
    /// The deadline of every upstream call.
    pub timeout: Duration,
}

/// Whether a user call may be repeated on the other flavor after it may have reached the
/// first (the first died mid-call, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A read: repeating it changes nothing.
    Safe,
    /// A write: only a call that never left may go to the other flavor.
    OnlyIfNeverSent,
}

/// What every call to a service carries from the client's request: its id, and who the
/// verified token speaks for (as metadata; the token stays here).
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub request_id: String,
    pub caller: crate::guard::Caller,
    /// The request's trace, continued by the services.
    pub trace: Option<tandem_serving::trace::TraceContext>,
}

/// A user call's outcome and the flavor that produced it.
pub struct Served<T> {
    pub flavor: Flavor,
    pub result: Result<T, Status>,
}

#[derive(Clone)]
pub struct Upstreams {
    users: [UserServiceClient<Channel>; 2],
    orders: Channel,
    /// (name, channel) of each upstream, for /health.
    named: [(&'static str, Channel); 3],
    timeout: Duration,
    metrics: EdgeMetrics,
    /// The traffic the migration analysis judges.
    recorder: Arc<Recorder>,
    /// Ejection of an upstream that keeps failing.
    pub breakers: Arc<Breakers>,
}

fn channel(url: &str, timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{url:?} is not a usable URL: {e}"))?
        // Connection refused is immediate; a silent host should not eat the deadline.
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    // Lazy: the edge starts (and answers /health with 503) even when an upstream is down.
    Ok(endpoint.connect_lazy())
}

impl Upstreams {
    pub fn new(
        config: &UpstreamConfig,
        metrics: EdgeMetrics,
        recorder: Arc<Recorder>,
        breakers: Arc<Breakers>,
    ) -> Result<Self, String> {
        let v1 = channel(&config.user_v1, config.timeout)?;
        let v2 = channel(&config.user_v2, config.timeout)?;
        let orders = channel(&config.orders, config.timeout)?;
        Ok(Upstreams {
            users: [
                UserServiceClient::new(v1.clone()),
                UserServiceClient::new(v2.clone()),
            ],
            orders: orders.clone(),
            named: [
                ("user-svc-v1", v1),
                ("user-svc-v2", v2),
                ("order-svc", orders),
            ],
            timeout: config.timeout,
            metrics,
            recorder,
            breakers,
        })
    }

    fn request<T>(&self, message: T, call: &Call) -> tonic::Request<T> {
        let mut request = tandem_serving::grpc::request_with_id(message, &call.request_id);
        if let Some(trace) = &call.trace {
            let metadata = request.metadata_mut();
            if let Ok(value) = trace.traceparent().parse() {
                metadata.insert(tandem_serving::trace::TRACEPARENT, value);
            }
            if let Some(Ok(value)) = trace.tracestate.as_deref().map(str::parse) {
                metadata.insert(tandem_serving::trace::TRACESTATE, value);
            }
        }
        if let Some(principal) = &call.caller.0 {
            let metadata = request.metadata_mut();
            if let Ok(subject) = principal.subject.parse() {
                metadata.insert(tandem::AUTH_SUBJECT, subject);
            }
            if let Ok(scopes) = principal.scope_names.parse() {
                metadata.insert(tandem::AUTH_SCOPES, scopes);
            }
        }
        // Tells the service how long the edge will wait, so it can give up too.
        request.set_timeout(self.timeout);
        request
    }

    /// Calls a user flavor; if it cannot be reached at all (the connection failed, so
    /// the request was never sent) the other flavor gets the request. A request that may
    /// have reached a flavor is repeated on the other only when it is `Safe` to: a read.
    /// A create or update is never repeated blindly; it might run twice.
    pub async fn user<Req, Resp, F, Fut>(
        &self,
        first: Flavor,
        retry: Retry,
        context: &Call,
        message: Req,
        call: F,
    ) -> Served<Resp>
    where
        Req: Clone,
        F: Fn(UserServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        // An ejected flavor's calls go to the other one. For the migration analysis
        // the call still counts against the flavor it was meant for, as a fault: an
        // ejected v2 must fail the rollout's checks, not hide from them behind a window
        // with no calls.
        let wanted = first;
        let (first, probe) = self.breakers.pick(wanted);
        if first != wanted {
            self.recorder.ejected_call(wanted);
        }
        let result = self
            .call_flavor(first, probe, context, message.clone(), &call)
            .await;
        match result {
            Err(status)
                if never_sent(&status)
                    || (retry == Retry::Safe && status.code() == Code::Unavailable) =>
            {
                let second = first.other();
                self.metrics.failover(first);
                tracing::warn!(from = first.as_str(), to = second.as_str(), error = %status.message(), "user flavor unreachable; failing over");
                Served {
                    flavor: second,
                    result: self
                        .call_flavor(second, false, context, message, &call)
                        .await,
                }
            }
            result => Served {
                flavor: first,
                result,
            },
        }
    }

    async fn call_flavor<Req, Resp, F, Fut>(
        &self,
        flavor: Flavor,
        probe: bool,
        context: &Call,
        message: Req,
        call: &F,
    ) -> Result<Resp, Status>
    where
        F: Fn(UserServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let started = Instant::now();
        let client = self.users[slot(flavor)].clone();
        let result = call(client, self.request(message, context))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.as_seen_by_clients(status, started));
        let elapsed = started.elapsed();
        self.metrics.flavor_call(flavor, result.is_ok(), elapsed);
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.recorder.call(flavor, code, elapsed);
        self.breakers.record_flavor(flavor, code, probe);
        result
    }

    /// A shadow read: `GetUser` on one flavor with a deadline of its own, neither
    /// counted as the flavor's traffic nor failed over.
    pub async fn get_user_shadow(
        &self,
        flavor: Flavor,
        user_id: &str,
        request_id: &str,
        deadline: Duration,
    ) -> Result<pb::User, Status> {
        // An ejected flavor is left alone, shadow reads included (a failed shadow).
        if self.breakers.is_ejected(flavor) {
            return Err(Status::unavailable("the flavor is ejected"));
        }
        let mut client = self.users[slot(flavor)].clone();
        let mut request = tandem_serving::grpc::request_with_id(
            pb::GetUserRequest {
                user_id: user_id.to_owned(),
            },
            request_id,
        );
        request.set_timeout(deadline);
        client
            .get_user(request)
            .await
            .map(|reply| reply.into_inner().user.unwrap_or_default())
    }

    pub async fn orders<Req, Resp, F, Fut>(
        &self,
        context: &Call,
        message: Req,
        call: F,
    ) -> Result<Resp, Status>
    where
        F: FnOnce(OrderServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.orders_over(context, message, |channel, request| {
            call(OrderServiceClient::new(channel), request)
        })
        .await
    }

    /// [`Self::orders`] for a call made on the channel itself, with a codec of its own
    /// (the list call's, which reads the answer straight into the REST page).
    pub async fn orders_over<Req, Resp, F, Fut>(
        &self,
        context: &Call,
        message: Req,
        call: F,
    ) -> Result<Resp, Status>
    where
        F: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        // Ejected: answer at once rather than wait out another deadline.
        let probe = self.breakers.admit_orders().map_err(|wait| {
            Status::unavailable(format!(
                "order-svc is out of service after repeated failures; next try in {wait:.0} s"
            ))
        })?;
        let started = Instant::now();
        let result = call(self.orders.clone(), self.request(message, context))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.as_seen_by_clients(status, started));
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.breakers.record_orders(code, probe);
        result
    }

    /// What a failed call means for the edge's client. tonic reports failures of the call
    /// itself (not statuses the service sent) as CANCELLED, UNKNOWN or INTERNAL with the
    /// cause as the status's source (INTERNAL is its reading of an HTTP/2 stream reset,
    /// which a service shutting down sends to calls it will not finish): a deadline that
    /// ran out (the edge's timer or the service's, which gets the deadline in
    /// `grpc-timeout`) is DEADLINE_EXCEEDED; a connection or stream that broke mid-call
    /// (the service died or is shutting down) is UNAVAILABLE. A status the service sent
    /// itself has no source and passes unchanged.
    fn as_seen_by_clients(&self, status: Status, started: Instant) -> Status {
        let local = std::error::Error::source(&status).is_some();
        let timed_out = started.elapsed() + Duration::from_millis(50) >= self.timeout
            || source_is::<tonic::TimeoutExpired>(&status);
        match status.code() {
            Code::Cancelled | Code::DeadlineExceeded if timed_out => {
                Status::deadline_exceeded("the upstream did not answer in time")
            }
            Code::Cancelled => Status::unavailable("the upstream went away during the call"),
            Code::Unknown | Code::Internal if local => {
                tracing::warn!(error = ?status, "upstream connection failed during a call");
                Status::unavailable("the connection to the upstream failed during the call")
            }
            _ => status,
        }
    }

    /// Each upstream's gRPC health: `Ok` when SERVING, else why not.
    pub async fn health(&self) -> Vec<(&'static str, Result<(), String>)> {
        let checks = self.named.iter().map(|(name, channel)| {
            let mut client = HealthClient::new(channel.clone());
            async move {
                let mut request = tonic::Request::new(HealthCheckRequest::default());
                request.set_timeout(Duration::from_secs(1));
                let verdict =
                    match tokio::time::timeout(Duration::from_secs(2), client.check(request)).await
                    {
                        Err(_) => Err("no answer within 2 s".to_owned()),
                        Ok(Err(status)) => Err(format!("unreachable: {}", status.message())),
                        Ok(Ok(reply))
                            if reply.get_ref().status == ServingStatus::Serving as i32 =>
                        {
                            Ok(())
                        }
                        Ok(Ok(_)) => Err("not serving".to_owned()),
                    };
                (*name, verdict)
            }
        });
        futures::future::join_all(checks).await
    }
}

/// Whether a call failed before anything was sent: tonic reports a failed connection
/// attempt with a `ConnectError` in the status's source chain.
pub fn never_sent(status: &Status) -> bool {
    source_is::<tonic::ConnectError>(status)
}

/// Whether an error of type `E` is in the status's source chain.
fn source_is<E: std::error::Error + 'static>(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<E>() {
            return true;
        }
        source = err.source();
    }
    false
}
