//! The guard's and TLS's flags, each with its environment fallback. One definition for
//! the binary and for tests that start an edge in their own process.

use std::path::PathBuf;
use std::time::Duration;

use super::{ADMIN_FAILURES, GuardConfig, JwksSource, JwtSettings, RateLimitSpec, TrustedProxies};
use crate::breaker::EjectionSettings;
use crate::tls::TlsFiles;

#[derive(Debug, Clone, clap::Args)]
pub struct GuardArgs {
    /// A JWKS, as a file path or an https URL: with it set, every REST route but
    /// /health, /docs and /openapi.json needs `Authorization: Bearer <token>`.
    #[arg(long, env = "EDGE_JWKS")]
    pub jwks: Option<JwksSource>,

    /// The `iss` tokens must carry.
    #[arg(long = "jwt-issuer", env = "EDGE_JWT_ISSUER", requires = "jwks")]
    pub jwt_issuer: Option<String>,

    /// The `aud` tokens must carry.
    #[arg(long = "jwt-audience", env = "EDGE_JWT_AUDIENCE", requires = "jwks")]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(
        long = "jwt-leeway-seconds",
        env = "EDGE_JWT_LEEWAY_SECONDS",
        default_value_t = 60
    )]
    pub jwt_leeway_seconds: u64,

    /// The claim that limits a token to one user and that user's orders.
    #[arg(
        long = "jwt-user-claim",
        env = "EDGE_JWT_USER_CLAIM",
        default_value = "tandem_user_id"
    )]
    pub jwt_user_claim: String,

    /// A token bucket per client (the token's `sub`, else its address), e.g.
    /// `100/s,burst=200`; no limit when unset.
    #[arg(long = "rate-limit", env = "EDGE_RATE_LIMIT")]
    pub rate_limit: Option<RateLimitSpec>,

    /// Failed admin logins allowed per address.
    #[arg(long = "admin-auth-limit", env = "EDGE_ADMIN_AUTH_LIMIT", default_value = ADMIN_FAILURES)]
    pub admin_auth_limit: RateLimitSpec,

    /// Proxies (addresses or CIDR ranges, comma-separated) whose `X-Forwarded-For` names
    /// the client, e.g. the load balancer's subnet.
    #[arg(
        long = "trusted-proxies",
        env = "EDGE_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: TrustedProxies,

    /// Serve HTTPS with this certificate chain (PEM); reloaded on SIGHUP or change.
    #[arg(long = "tls-cert", env = "EDGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long = "tls-key", env = "EDGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Consecutive faults (unreachable, 5xx-class) after which an upstream is ejected.
    #[arg(long = "eject-after", env = "EDGE_EJECT_AFTER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub eject_after: u32,

    /// The first ejection's length in seconds; each one in a row doubles it.
    #[arg(
        long = "eject-base-seconds",
        env = "EDGE_EJECT_BASE_SECONDS",
        default_value_t = 30.0
    )]
    pub eject_base_seconds: f64,

    /// The longest an ejection lasts, in seconds.
    #[arg(
        long = "eject-max-seconds",
        env = "EDGE_EJECT_MAX_SECONDS",
        default_value_t = 300.0
    )]
    pub eject_max_seconds: f64,
}

/// What the flags set, beyond the guard itself.
pub struct Protection {
    pub guard: GuardConfig,
    pub tls: Option<TlsFiles>,
    pub ejection: EjectionSettings,
}

/// For parsing the flags alone (tests starting an edge in their process).
#[derive(Debug, clap::Parser)]
struct Only {
    #[command(flatten)]
    args: GuardArgs,
}

impl GuardArgs {
    /// The flags in `args` (no program name), as the binary would read them.
    pub fn parse_from<I, S>(args: I) -> Result<GuardArgs, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let all = std::iter::once(std::ffi::OsString::from("edge"))
            .chain(args.into_iter().map(Into::into));
        Only::try_parse_from(all).map(|only| only.args)
    }

    pub fn into_config(self) -> Protection {
        let guard = GuardConfig {
            jwt: self.jwks.map(|jwks| JwtSettings {
                jwks,
                issuer: self.jwt_issuer,
                audience: self.jwt_audience,
                leeway: Duration::from_secs(self.jwt_leeway_seconds),
                user_claim: self.jwt_user_claim,
            }),
            rate_limit: self.rate_limit,
            trusted_proxies: self.trusted_proxies,
            admin_failures: self.admin_auth_limit,
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        };
        let seconds = |s: f64| Duration::from_secs_f64(s.clamp(0.0, 86_400.0));
        let ejection = EjectionSettings {
            after: self.eject_after,
            base: seconds(self.eject_base_seconds),
            max: seconds(self.eject_max_seconds).max(seconds(self.eject_base_seconds)),
        };
        Protection {
            guard,
            tls,
            ejection,
        }
    }
}
