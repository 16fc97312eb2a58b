//! The public door's guard: who is calling (a JWT from the deployment's identity
//! provider), how often (a token bucket per client), and from where (the connection's
//! peer, or what trusted proxies say). Each part is off unless configured, so a laptop's
//! `./scripts/start` needs none of it; compose.yaml turns them on for a public host.
//!
//! One middleware runs them in order, inside the access log (so refusals are logged and
//! counted like any answer): find the client, verify its token, charge its bucket, then
//! check the route's scope. A refused token still costs a bucket cell (of the client's
//! address), so spraying tokens is limited like any other traffic.

pub mod args;
pub mod client;
pub mod jwt;
pub mod ratelimit;
pub mod scopes;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::ApiError;
pub use client::TrustedProxies;
use jwt::Verifier;
pub use jwt::{JwksSource, JwtSettings, Principal, Refusal};
pub use ratelimit::RateLimitSpec;
use ratelimit::{ClientKey, ClientLimiter, Decision, Lockout};
use scopes::{Needs, Scopes};

/// How the guard is set; `Default` is everything off.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Bearer tokens required on the REST API when set.
    pub jwt: Option<JwtSettings>,
    /// A bucket per client when set.
    pub rate_limit: Option<RateLimitSpec>,
    pub trusted_proxies: TrustedProxies,
    /// Failed admin authentications allowed per address (against token guessing).
    pub admin_failures: RateLimitSpec,
}

/// Ten failed admin logins a minute per address, five in a row at most.
pub const ADMIN_FAILURES: &str = "10/m,burst=5";

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            jwt: None,
            rate_limit: None,
            trusted_proxies: TrustedProxies::default(),
            admin_failures: ADMIN_FAILURES.parse().expect("the default is valid"),
        }
    }
}

/// How often idle buckets are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

pub struct Guard {
    verifier: Option<Verifier>,
    limiter: Option<ClientLimiter>,
    admin_failures: ClientLimiter,
    lockout: Lockout,
    proxies: TrustedProxies,
    metrics: GuardMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimiterLabel {
    limiter: &'static str,
}

struct GuardMetrics {
    auth_failures: Family<ReasonLabel, Counter>,
    limited: Family<LimiterLabel, Counter>,
    keys: Family<LimiterLabel, Gauge>,
}

impl Guard {
    pub async fn new(config: GuardConfig, registry: &mut Registry) -> Result<Guard, String> {
        let verifier = match config.jwt {
            Some(settings) => Some(Verifier::new(settings).await?),
            None => None,
        };
        let metrics = GuardMetrics {
            auth_failures: Family::default(),
            limited: Family::default(),
            keys: Family::default(),
        };
        registry.register(
            "auth_failures",
            "Requests refused for their credentials, by reason",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit (client: the API's; admin_auth: failed admin logins)",
            metrics.limited.clone(),
        );
        registry.register(
            "rate_limit_keys",
            "Clients with a bucket in memory (idle ones are dropped)",
            metrics.keys.clone(),
        );
        Ok(Guard {
            verifier,
            limiter: config.rate_limit.map(ClientLimiter::new),
            admin_failures: ClientLimiter::new(config.admin_failures),
            lockout: Lockout::default(),
            proxies: config.trusted_proxies,
            metrics,
        })
    }

    /// Whether the REST API needs tokens.
    pub fn authenticates(&self) -> bool {
        self.verifier.is_some()
    }

    /// Drops idle buckets every few seconds, so memory follows the clients of the last
    /// minute rather than every client ever seen.
    pub async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Some(limiter) = &self.limiter {
                self.metrics
                    .keys
                    .get_or_create(&LimiterLabel { limiter: "client" })
                    .set(limiter.sweep() as i64);
            }
            self.metrics
                .keys
                .get_or_create(&LimiterLabel {
                    limiter: "admin_auth",
                })
                .set((self.admin_failures.sweep() + self.lockout.sweep()) as i64);
        }
    }

    fn refused(&self, refusal: Refusal) -> ApiError {
        self.metrics
            .auth_failures
            .get_or_create(&ReasonLabel {
                reason: refusal.label(),
            })
            .inc();
        tracing::info!(reason = %refusal, "token refused");
        unauthenticated(refusal)
    }

    /// The admin API's check: the admin token, or a token with `tandem:admin`. Failed
    /// attempts are limited per address; past the limit every attempt from it is
    /// refused (429), right ones included, until the bucket refills, so guessing cannot
    /// tell a hit from a miss.
    pub async fn admin(
        &self,
        admin_token: Option<&crate::AdminToken>,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        if admin_token.is_none() && self.verifier.is_none() {
            return Err(ApiError::not_found(
                "the admin API is disabled: start the edge with EDGE_ADMIN_TOKEN (or EDGE_JWKS) set",
            ));
        }
        if let Some(wait) = self.lockout.remaining(client) {
            return Err(self.admin_limited(wait));
        }
        let presented = bearer(headers).unwrap_or("");
        if admin_token.is_some_and(|t| t.matches(presented)) {
            return Ok(());
        }
        let missing = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "the admin API needs Authorization: Bearer <admin token>",
        )
        .with_header("www-authenticate", "Bearer realm=\"tandem-admin\"");
        // No credential at all is not a guess: refused, not charged.
        if presented.is_empty() {
            return Err(missing);
        }
        let verdict = match &self.verifier {
            Some(verifier) => match verifier.verify(presented).await {
                Ok(p) if p.scopes.contains(Scopes::ADMIN) => return Ok(()),
                Ok(_) => Err(forbidden(Scopes::ADMIN)),
                Err(refusal) => Err(self.refused(refusal)),
            },
            None => Err(missing),
        };
        // A failure costs a cell; one past the bucket locks the address out until the
        // next cell is due.
        let decision = self.admin_failures.check(&ClientKey::Address(client));
        if !decision.allowed {
            let wait = decision.retry_after.unwrap_or(1);
            self.lockout.lock(client, Duration::from_secs(wait));
            return Err(self.admin_limited(wait));
        }
        verdict
    }

    fn admin_limited(&self, wait: u64) -> ApiError {
        self.metrics
            .limited
            .get_or_create(&LimiterLabel {
                limiter: "admin_auth",
            })
            .inc();
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            format!("too many failed admin logins from this address; try again in {wait} s"),
        )
        .with_owned_header(header::RETRY_AFTER, wait.to_string())
    }

    /// The client's address, as the trusted proxies report it.
    pub fn client_address(&self, extensions: &Extensions, headers: &HeaderMap) -> IpAddr {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        self.proxies.client(peer, headers)
    }
}

/// `Bearer <token>` from the Authorization header (the scheme in any case, RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// 401, RFC 6750's way.
fn unauthenticated(refusal: Refusal) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        match refusal {
            Refusal::Missing => "this API needs Authorization: Bearer <token>".to_owned(),
            other => format!("the bearer token is not valid: {other}"),
        },
    )
    .with_header(
        "www-authenticate",
        "Bearer realm=\"tandem\", error=\"invalid_token\"",
    )
}

fn forbidden(scope: Scopes) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        format!("the token lacks the scope {}", scope.name()),
    )
    .with_owned_header(
        header::WWW_AUTHENTICATE,
        format!(
            "Bearer realm=\"tandem\", error=\"insufficient_scope\", scope=\"{}\"",
            scope.name()
        ),
    )
}

/// Who the request is from, for the handlers and the services' metadata: `None` when the
/// API is open (no JWKS configured) or on the admin API.
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Arc<Principal>>);

impl Caller {
    /// The one user this caller may touch, if its token is scoped to one.
    pub fn only_user(&self) -> Option<&str> {
        self.0.as_ref()?.user.as_deref()
    }

    /// Whether this caller may see the resources of `user_id`.
    pub fn may_touch(&self, user_id: &str) -> bool {
        self.only_user().is_none_or(|own| own == user_id)
    }
}

/// The middleware: see the module's text.
pub(crate) async fn check(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let guard = &state.guard;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let needs = scopes::needs(request.method(), route);
    if needs == Needs::Nothing {
        return next.run(request).await;
    }
    // Who: a verified token on the API's routes (the admin API checks its own).
    let verdict = match (&guard.verifier, needs) {
        (Some(verifier), Needs::Scope(_)) => Some(match bearer(request.headers()) {
            Some(token) => verifier.verify(token).await,
            None => Err(Refusal::Missing),
        }),
        _ => None,
    };
    // How often: by subject when the token holds one, else by address.
    let decision = guard.limiter.as_ref().map(|limiter| {
        let key = match &verdict {
            Some(Ok(p)) if !p.subject.is_empty() => ClientKey::Subject(p.subject.clone()),
            _ => ClientKey::Address(guard.client_address(request.extensions(), request.headers())),
        };
        limiter.check(&key)
    });
    let answer = match (&decision, verdict) {
        (Some(d), _) if !d.allowed => {
            guard
                .metrics
                .limited
                .get_or_create(&LimiterLabel { limiter: "client" })
                .inc();
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                format!(
                    "rate limit exceeded; try again in {} s",
                    d.retry_after.unwrap_or(1)
                ),
            ))
        }
        (_, Some(Err(refusal))) => Err(guard.refused(refusal)),
        (_, Some(Ok(principal))) => match needs {
            Needs::Scope(scope) if !principal.scopes.contains(scope) => Err(forbidden(scope)),
            _ => {
                let span = tracing::Span::current();
                span.record("subject", &*principal.subject);
                span.record("scopes", principal.scope_names.as_str());
                request.extensions_mut().insert(Caller(Some(principal)));
                Ok(())
            }
        },
        (_, None) => Ok(()),
    };
    let mut response = match answer {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    };
    if let Some(decision) = decision {
        add_rate_headers(response.headers_mut(), &decision);
    }
    response
}

fn add_rate_headers(headers: &mut HeaderMap, decision: &Decision) {
    if let Ok(v) = HeaderValue::from_str(&decision.policy) {
        headers.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&decision.state) {
        headers.insert("ratelimit", v);
    }
    if let Some(wait) = decision.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
}
