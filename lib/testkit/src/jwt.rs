//! Test tokens: signed with the throwaway keys in tests/fixtures/jwt, as an identity
//! provider would sign them, and the JWKS that publishes their public halves.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The issuer and audience the test edges are started with.
pub const ISSUER: &str = "https://idp.tandem.test/";
pub const AUDIENCE: &str = "tandem-api";

/// One of the fixture keys: `rsa-1`, `rsa-2` (RS256), `ec-1` (ES256), `ed-1` (EdDSA).
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pem: Vec<u8>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/jwt")
}

impl TestKey {
    pub fn load(name: &str) -> TestKey {
        let pem = std::fs::read(fixtures().join(format!("{name}.pem")))
            .unwrap_or_else(|e| panic!("fixture key {name}: {e}"));
        let (alg, encoding) = match name.split('-').next() {
            Some("rsa") => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)),
            Some("ec") => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)),
            Some("ed") => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem)),
            _ => panic!("no fixture key type for {name}"),
        };
        TestKey {
            kid: name.to_owned(),
            alg,
            encoding: encoding.expect("a usable fixture key"),
            pem,
        }
    }

    /// The public key as a JWK, with its `kid` and `alg`.
    pub fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).expect("a public JWK");
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).expect("a JWK as JSON")
    }

    /// A token signed with this key, its header naming the key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(header, claims)
    }

    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("a signed token")
    }

    /// The private key, PEM (for forging: an HMAC "signed" with the key's bytes).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

/// `{"keys": [...]}` of these keys.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// Writes the JWKS of `keys` as `dir`/jwks.json; returns its path.
pub fn write_jwks(dir: &std::path::Path, keys: &[&TestKey]) -> String {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks(keys).to_string()).expect("the JWKS written");
    path.display().to_string()
}

/// The edge's flags to verify tokens against `jwks` (a path or URL) with the test
/// issuer and audience.
pub fn trusting(jwks: &str) -> Vec<String> {
    [
        "--jwks",
        jwks,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]
    .map(str::to_owned)
    .to_vec()
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs() as i64
}

/// The claims of a good token for `sub` with `scope`, valid for an hour.
pub fn claims(sub: &str, scope: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "scope": scope,
        "iat": now(),
        "exp": now() + 3600,
    })
}

/// Every scope of the REST API (not the admin one).
pub const API_SCOPES: &str = "users:read users:write orders:read orders:write";

#[cfg(test)]
mod tests {
    use super::*;

    /// scripts/compose-test mounts tests/fixtures/jwt/compose-jwks into the edge's
    /// container, which cannot run this code: the committed file must stay the JWKS of
    /// `rsa-1`. `TANDEM_UPDATE_FIXTURES=1` rewrites it.
    #[test]
    fn the_compose_jwks_is_rsa_1s() {
        let dir = fixtures().join("compose-jwks");
        let expected = jwks(&[&TestKey::load("rsa-1")]);
        if std::env::var_os("TANDEM_UPDATE_FIXTURES").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            write_jwks(&dir, &[&TestKey::load("rsa-1")]);
        }
        let committed: Value =
            serde_json::from_slice(&std::fs::read(dir.join("jwks.json")).unwrap()).unwrap();
        assert_eq!(committed, expected);
    }
}
