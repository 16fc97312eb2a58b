//! Bearer tokens from the deployment's identity provider (Cognito, Auth0, Keycloak…):
//! tandem only verifies them, against the provider's published keys (a JWKS).
//!
//! What is accepted is decided by the key, never by the token: a key says its algorithm
//! (or its type and curve imply one of RS256, ES256, EdDSA), and a token whose header
//! names another algorithm is refused. So `alg: none`, every HS* algorithm (a public key
//! used as an HMAC secret) and algorithm confusion fail before any signature check.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::scopes::Scopes;

/// Tokens longer than this are refused unread (a real one is a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// A token naming a key the set does not have triggers a refetch at most this often.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Verified tokens kept, so a client sending the same token again costs a map lookup
/// instead of a signature check (as Envoy's jwt_authn does). Cleared when the keys change.
const CACHE_ENTRIES: usize = 10_000;
/// How long fetching a JWKS over the network may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the keys are: a file (re-read when a token names an unknown key) or a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl FromStr for JwksSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("an empty JWKS location".into());
        }
        if s.starts_with("https://") || s.starts_with("http://") {
            Ok(JwksSource::Url(s.to_owned()))
        } else {
            Ok(JwksSource::File(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url(url) => f.write_str(url),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub jwks: JwksSource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim that scopes a token to one user (`tandem_user_id`).
    pub user_claim: String,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`; empty when the token has none. Shared: every request of the token keys
    /// its rate-limit bucket by it.
    pub subject: Arc<str>,
    pub scopes: Scopes,
    /// `scopes` written out once, for every call's metadata and log line.
    pub scope_names: String,
    /// Set when the token may touch only this user and that user's orders.
    pub user: Option<String>,
}

/// Why a token was refused. The reason goes to the log and the metrics; the client is
/// told only that its token is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token names no known key")]
    UnknownKey,
    #[error("the signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token's claims are malformed")]
    Claims,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
            Refusal::Claims => "claims",
        }
    }
}

/// One usable key of the set.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys and the tokens verified with them (dropped together when the keys change).
#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    /// Raw JWKS bytes, to tell a changed set from the same one fetched again.
    raw: Vec<u8>,
}

/// A verified token: its principal and when it stops being valid.
#[derive(Clone)]
struct Verified {
    principal: Arc<Principal>,
    /// `exp`, seconds since the epoch.
    expires: u64,
    /// `nbf`, seconds since the epoch (0 when absent).
    not_before: u64,
}

pub struct Verifier {
    settings: JwtSettings,
    keys: RwLock<Arc<KeySet>>,
    cache: RwLock<HashMap<Box<str>, Verified>>,
    /// When the keys were last (re)loaded because of an unknown key.
    last_refetch: Mutex<Option<Instant>>,
    http: reqwest::Client,
}

impl Verifier {
    /// Loads the keys; an unreadable or keyless JWKS is an error at start-up, not a
    /// 401 on every request.
    pub async fn new(settings: JwtSettings) -> Result<Verifier, String> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("an HTTP client for the JWKS: {e}"))?;
        let verifier = Verifier {
            settings,
            keys: RwLock::new(Arc::new(KeySet::default())),
            cache: RwLock::new(HashMap::new()),
            last_refetch: Mutex::new(None),
            http,
        };
        let set = verifier.load().await?;
        tracing::info!(jwks = %verifier.settings.jwks, keys = set.keys.len(), "JWT keys loaded");
        *verifier.keys.write().expect("the key set lock") = Arc::new(set);
        Ok(verifier)
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Reads the JWKS from its source and keeps the keys tandem accepts.
    async fn load(&self) -> Result<KeySet, String> {
        let raw = match &self.settings.jwks {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read the JWKS {}: {e}", path.display()))?,
            JwksSource::Url(url) => {
                let response = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| format!("cannot fetch the JWKS {url}: {e}"))?;
                response
                    .bytes()
                    .await
                    .map_err(|e| format!("cannot fetch the JWKS {url}: {e}"))?
                    .to_vec()
            }
        };
        parse_jwks(raw)
    }

    /// Verifies `token` and says whom it speaks for.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Malformed);
        }
        let now = now_seconds();
        if let Some(hit) = self.cached(token) {
            return self.still_valid(&hit, now).map(|()| hit.principal);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(Refusal::Algorithm);
        }
        let keys = match self.find(header.kid.as_deref(), header.alg) {
            Some(keys) => keys,
            // A key rotated in at the provider: look again, at most every 30 s.
            None if self.may_refetch() => {
                self.refetch().await;
                self.find(header.kid.as_deref(), header.alg)
                    .ok_or(Refusal::UnknownKey)?
            }
            None => return Err(Refusal::UnknownKey),
        };
        let (set, index) = keys;
        let key = &set.keys[index];
        if key.alg != header.alg {
            return Err(Refusal::Algorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.alg))
            .map_err(|e| refusal(&e))?;
        let claims = data.claims;
        let scopes = claims.scopes();
        let user = claims.user(&self.settings.user_claim)?;
        let principal = Arc::new(Principal {
            subject: claims.sub.unwrap_or_default().into(),
            scopes,
            scope_names: scopes.names(),
            user,
        });
        self.remember(
            token,
            Verified {
                principal: principal.clone(),
                // Saturating casts: the checks above passed, these only keep it live.
                expires: claims.exp as u64,
                not_before: claims.nbf.map_or(0, |nbf| nbf as u64),
            },
        );
        Ok(principal)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.settings.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation
    }

    /// The key a token names: by `kid`, or, for a token without one, the only key of its
    /// algorithm.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<(Arc<KeySet>, usize)> {
        let set = self.keys.read().expect("the key set lock").clone();
        let index = match kid {
            Some(kid) => set
                .keys
                .iter()
                .position(|k| k.kid.as_deref() == Some(kid))?,
            None => {
                let mut of_alg = set.keys.iter().enumerate().filter(|(_, k)| k.alg == alg);
                let (index, _) = of_alg.next()?;
                if of_alg.next().is_some() {
                    return None;
                }
                index
            }
        };
        Some((set, index))
    }

    /// Claims the right to refetch now; false when one ran in the last 30 s.
    fn may_refetch(&self) -> bool {
        let mut last = self.last_refetch.lock().expect("the refetch lock");
        match *last {
            Some(at) if at.elapsed() < REFETCH_INTERVAL => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    async fn refetch(&self) {
        match self.load().await {
            Ok(set) => {
                let mut keys = self.keys.write().expect("the key set lock");
                if keys.raw != set.raw {
                    tracing::info!(jwks = %self.settings.jwks, keys = set.keys.len(), "JWT keys changed");
                    *keys = Arc::new(set);
                    // A key that left the set must stop admitting its tokens.
                    self.cache.write().expect("the token cache lock").clear();
                }
            }
            // The keys in hand stay: a provider's blip must not log everyone out.
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh the JWT keys; keeping the current ones")
            }
        }
    }

    fn cached(&self, token: &str) -> Option<Verified> {
        self.cache
            .read()
            .expect("the token cache lock")
            .get(token)
            .cloned()
    }

    fn remember(&self, token: &str, verified: Verified) {
        let mut cache = self.cache.write().expect("the token cache lock");
        if cache.len() >= CACHE_ENTRIES {
            // Expired entries go first; if all are live, start over (cheap, and rare:
            // it takes 10,000 distinct live tokens).
            let now = now_seconds();
            let leeway = self.settings.leeway.as_secs();
            cache.retain(|_, v| v.expires.saturating_add(leeway) > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(token.into(), verified);
    }

    /// `exp` and `nbf` again for a token verified earlier.
    fn still_valid(&self, verified: &Verified, now: u64) -> Result<(), Refusal> {
        let leeway = self.settings.leeway.as_secs();
        if verified.expires.saturating_add(leeway) <= now {
            return Err(Refusal::Expired);
        }
        if verified.not_before > now.saturating_add(leeway) {
            return Err(Refusal::NotYetValid);
        }
        Ok(())
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refusal(error: &jsonwebtoken::errors::Error) -> Refusal {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => Refusal::Signature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidIssuer => Refusal::Issuer,
        ErrorKind::InvalidAudience => Refusal::Audience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => Refusal::Algorithm,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => Refusal::Claims,
        ErrorKind::Json(_) => Refusal::Claims,
        _ => Refusal::Malformed,
    }
}

/// The claims tandem reads; the rest of the token is ignored.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    /// Seconds since the epoch; some providers write fractions.
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    /// OAuth 2.0's space-separated list (RFC 8693).
    #[serde(default)]
    scope: Option<String>,
    /// Azure AD and Okta's form: a list, or a space-separated string.
    #[serde(default)]
    scp: Option<StringOrList>,
    /// Everything else, for the configurable user claim.
    #[serde(flatten)]
    other: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    String(String),
    List(Vec<String>),
}

impl Claims {
    fn scopes(&self) -> Scopes {
        let mut scopes = Scopes::NONE;
        if let Some(scope) = &self.scope {
            scopes = scopes.union(Scopes::parse(scope.split_ascii_whitespace()));
        }
        match &self.scp {
            Some(StringOrList::String(s)) => {
                scopes = scopes.union(Scopes::parse(s.split_ascii_whitespace()));
            }
            Some(StringOrList::List(list)) => {
                scopes = scopes.union(Scopes::parse(list.iter().map(String::as_str)));
            }
            None => {}
        }
        scopes
    }

    /// The user a token is limited to. A claim that is present but not a non-empty
    /// string refuses the token rather than granting everything.
    fn user(&self, claim: &str) -> Result<Option<String>, Refusal> {
        match self.other.get(claim) {
            None => Ok(None),
            Some(serde_json::Value::String(user)) if !user.is_empty() && user.len() <= 128 => {
                Ok(Some(user.clone()))
            }
            Some(_) => Err(Refusal::Claims),
        }
    }
}

/// The keys of a JWKS that can verify RS256, ES256 or EdDSA signatures. Others (an
/// encryption key, a symmetric key, an unknown type) are skipped with a warning, so one
/// odd key does not take the whole set down.
fn parse_jwks(raw: Vec<u8>) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet =
        serde_json::from_slice(&raw).map_err(|e| format!("the JWKS is not a key set: {e}"))?;
    let mut keys = Vec::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        match usable_key(value) {
            Ok(key) => keys.push(key),
            Err(why) => tracing::warn!(index = i, %why, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS has no RS256, ES256 or EdDSA signing key".into());
    }
    Ok(KeySet { keys, raw })
}

fn usable_key(value: serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    if let Some(use_) = &jwk.common.public_key_use
        && *use_ != PublicKeyUse::Signature
    {
        return Err("not a signing key (use is not sig)".into());
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (HS*) keys are not accepted".into());
        }
        _ => return Err("only RSA, EC P-256 and Ed25519 keys are accepted".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => implied,
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => implied,
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => implied,
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => implied,
        Some(other) => return Err(format!("alg {other:?} is not accepted for this key")),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}
