//! The guarded edge, end to end over real services: JWT verification against a JWKS
//! (hostile tokens, key rotation through the refetch), scopes and per-user tokens, rate
//! limits with their headers, the admin API's lock-out, and HTTPS with a certificate
//! reloaded on SIGHUP, checked with curl.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::Method;
use serde_json::{Value, json};
use tandem_testkit::jwt::{
    API_SCOPES, AUDIENCE, ISSUER, TestKey, claims, jwks, now, trusting, write_jwks,
};
use tandem_testkit::*;

/// An edge that verifies tokens against `jwks` (a file path or URL).
fn guarded(jwks: &str, extra: &[&str]) -> StackBuilder {
    let mut args = trusting(jwks);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    StackBuilder::edge().edge_args(&args)
}

/// A token's parts re-joined after `edit` changed the decoded header and claims, the
/// signature kept (so it no longer matches) unless `edit` replaces it.
fn forge(token: &str, edit: impl FnOnce(&mut Value, &mut Value, &mut String)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    let mut signature = parts[2].to_owned();
    edit(&mut header, &mut payload, &mut signature);
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string()),
        signature
    )
}

fn assert_invalid_token(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.text);
    let body = reply.json();
    assert_eq!(
        (body["status"].as_str(), body["code"].as_str()),
        (Some("error"), Some("UNAUTHENTICATED")),
        "{what}: {body}"
    );
    let challenge = reply.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""),
        "{what}: WWW-Authenticate {challenge:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_tokens_of_each_algorithm_pass_and_every_hostile_one_gets_401() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec, ed) = (
        TestKey::load("rsa-1"),
        TestKey::load("ec-1"),
        TestKey::load("ed-1"),
    );
    let jwks_path = write_jwks(dir.path(), &[&rsa, &ec, &ed]);
    let stack = guarded(&jwks_path, &[]).start().await;
    let open = stack.http();

    // Open without a token: health and the API's documents.
    for path in ["/health", "/openapi.json", "/docs/"] {
        assert_eq!(open.get(path).await.status, 200, "{path}");
    }
    let good = rsa.sign(&claims("alice", API_SCOPES));
    let alice = open.with_token(&good);
    let user_id = alice.create_user(&unique_email("jwt")).await;
    let path = format!("/users/{user_id}");
    for key in [&rsa, &ec, &ed] {
        let token = key.sign(&claims("alice", API_SCOPES));
        let reply = open.with_token(&token).get(&path).await;
        assert_eq!(reply.status, 200, "{:?}: {}", key.alg, reply.text);
    }

    let n = now();
    let mut hostile: Vec<(&str, String)> = vec![
        ("expired", rsa.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "scope": API_SCOPES, "exp": n - 3600}))),
        ("not yet valid", rsa.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "scope": API_SCOPES, "nbf": n + 3600, "exp": n + 7200}))),
        ("wrong issuer", rsa.sign(&json!({"iss": "https://evil.test/", "aud": AUDIENCE, "sub": "a", "scope": API_SCOPES, "exp": n + 3600}))),
        ("wrong audience", rsa.sign(&json!({"iss": ISSUER, "aud": "someone-else", "sub": "a", "scope": API_SCOPES, "exp": n + 3600}))),
        ("no exp", rsa.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "scope": API_SCOPES}))),
        ("alg none", forge(&good, |h, _, sig| { h["alg"] = json!("none"); sig.clear(); })),
        ("alg none, signature kept", forge(&good, |h, _, _| h["alg"] = json!("none"))),
        ("claims changed after signing", forge(&good, |_, p, _| p["sub"] = json!("mallory"))),
        ("header alg not the key's (ES256 header, RSA key)", forge(&good, |h, _, _| h["alg"] = json!("ES256"))),
        ("kid of no known key", forge(&good, |h, _, _| h["kid"] = json!("no-such-key"))),
        ("truncated signature", good[..good.len() - 10].to_owned()),
        ("no signature", good.rsplit_once('.').unwrap().0.to_owned() + "."),
        ("two parts", good.rsplit_once('.').unwrap().0.to_owned()),
        ("not base64", "@@@.@@@.@@@".to_owned()),
        ("not JSON", format!("{}.{}.{}", B64.encode("nope"), B64.encode("nope"), B64.encode("nope"))),
        ("empty", String::new()),
        ("huge", format!("{}.{}.{}", B64.encode("{\"alg\":\"RS256\"}"), "A".repeat(9000), "B".repeat(300))),
        ("user claim not a string", rsa.sign(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "scope": API_SCOPES, "exp": n + 3600, "tandem_user_id": 7}))),
    ];
    // HS256 "signed" with the public key as the secret: the classic confusion attack.
    {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let public_jwk = rsa.jwk().to_string();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rsa.kid.clone());
        for secret in [public_jwk.as_bytes(), rsa.pem()] {
            let forged = jsonwebtoken::encode(
                &header,
                &claims("mallory", API_SCOPES),
                &EncodingKey::from_secret(secret).unwrap(),
            )
            .unwrap();
            hostile.push(("HS256 with the key as its secret", forged));
        }
    }
    for (what, token) in &hostile {
        let request = open
            .request(Method::GET, &path)
            .header("authorization", format!("Bearer {token}"));
        assert_invalid_token(&open.send(request).await, what);
    }
    // No header, another scheme, a bare "Bearer".
    assert_invalid_token(&open.get(&path).await, "no Authorization");
    for value in ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer "] {
        let reply = open
            .send(
                open.request(Method::GET, &path)
                    .header("authorization", value),
            )
            .await;
        assert_invalid_token(&reply, value);
    }
    // A write without a token changes nothing.
    let put = open
        .put(&path, &json!({"emails": [unique_email("nope")]}))
        .await;
    assert_eq!(put.status, 401);
    let after = alice.get(&path).await.json();
    assert_eq!(after["user"]["emails"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_gate_routes_and_a_user_token_sees_only_its_own_user_and_orders() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::load("rsa-1");
    let stack = guarded(&write_jwks(dir.path(), &[&key]), &[]).start().await;
    let open = stack.http();
    let service = open.with_token(&key.sign(&claims("svc", API_SCOPES)));

    // Two users with an order each, made by a service token.
    let (email_a, email_b) = (unique_email("own-a"), unique_email("own-b"));
    let user_a = service.create_user(&email_a).await;
    let user_b = service.create_user(&email_b).await;
    let order = |user: &str, email: &str| {
        let (service, body) = (service.clone(), order_body(user, email));
        async move {
            let reply = service.post("/orders", &body).await;
            assert_eq!(reply.status, 201, "{}", reply.text);
            reply.json()["order"]["orderId"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let order_a = order(&user_a, &email_a).await;
    let order_b = order(&user_b, &email_b).await;

    // Scopes: a reader cannot write; only tandem:admin opens the dial and /metrics.
    let reader = open.with_token(&key.sign(&claims("reader", "users:read orders:read")));
    assert_eq!(reader.get(&format!("/users/{user_a}")).await.status, 200);
    for reply in [
        reader
            .put(
                &format!("/users/{user_a}"),
                &json!({"emails": [unique_email("r")]}),
            )
            .await,
        reader.post("/orders", &order_body(&user_a, &email_a)).await,
        reader.post("/users", &user_body(&unique_email("r"))).await,
        reader.get("/admin/routing").await,
        reader.get("/metrics").await,
    ] {
        assert_eq!(reply.status, 403, "{}", reply.text);
        assert_eq!(reply.json()["code"], "PERMISSION_DENIED");
        assert!(
            reply
                .header("www-authenticate")
                .unwrap_or("")
                .contains("insufficient_scope")
        );
    }
    let operator = open.with_token(&key.sign(&claims("operator", "tandem:admin")));
    assert_eq!(operator.get("/admin/routing").await.status, 200);
    assert_eq!(operator.get("/metrics").await.status, 200);
    assert_eq!(operator.get(&format!("/users/{user_a}")).await.status, 403);
    // The admin token still opens the admin API.
    let admin = open.with_token(ADMIN_TOKEN);
    assert_eq!(admin.get("/admin/routing").await.status, 200);

    // A token limited to user A: B's user and orders are as absent as unknown ones.
    let mut limited = claims("a-app", API_SCOPES);
    limited["tandem_user_id"] = json!(user_a);
    let a = open.with_token(&key.sign(&limited));
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(a.get(&format!("/users/{user_a}")).await.status, 200);
    for path in [
        format!("/users/{user_b}"),
        format!("/orders/{order_b}"),
        format!("/users/{unknown}"),
    ] {
        let reply = a.get(&path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.text);
        assert_eq!(reply.json()["code"], "NOT_FOUND");
    }
    // Writes to B's things are refused and change nothing.
    let new_email = unique_email("stolen");
    assert_eq!(
        a.put(
            &format!("/users/{user_b}"),
            &json!({"emails": [&new_email]})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        a.put(
            &format!("/orders/{order_b}/status"),
            &json!({"orderStatus": "delivered"})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        a.put(
            &format!("/orders/{order_b}/details"),
            &json!({"emails": [&new_email]})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        a.post("/orders", &order_body(&user_b, &email_b))
            .await
            .status,
        404
    );
    assert_eq!(
        a.post("/users", &user_body(&unique_email("new")))
            .await
            .status,
        403
    );
    let b_order = service.get(&format!("/orders/{order_b}")).await.json();
    assert_eq!(b_order["order"]["orderStatus"], "under process");
    assert_eq!(b_order["order"]["emails"], json!([email_b]));
    let b_user = service.get(&format!("/users/{user_b}")).await.json();
    assert_eq!(b_user["user"]["emails"], json!([email_b]));

    // Listing: only A's orders, whatever the query asks.
    let ids = |reply: Reply| -> Vec<String> {
        reply.json()["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["orderId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(a.get("/orders").await), vec![order_a.clone()]);
    assert_eq!(
        ids(a.get(&format!("/orders?userId={user_a}")).await),
        vec![order_a.clone()]
    );
    assert!(ids(a.get(&format!("/orders?userId={user_b}")).await).is_empty());
    // And A's own changes work.
    let moved = a
        .put(
            &format!("/orders/{order_a}/status"),
            &json!({"orderStatus": "shipping"}),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text);
}

/// A JWKS endpoint the test controls: it serves `keys` and counts the fetches.
struct IdentityProvider {
    url: String,
    keys: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl IdentityProvider {
    async fn start(keys: Value) -> IdentityProvider {
        let keys = Arc::new(std::sync::Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = {
            let (keys, fetches) = (keys.clone(), fetches.clone());
            axum::Router::new().route(
                "/.well-known/jwks.json",
                axum::routing::get(move || {
                    let (keys, fetches) = (keys.clone(), fetches.clone());
                    async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        axum::Json(keys.lock().unwrap().clone())
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        IdentityProvider { url, keys, fetches }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_works_with_no_restart_and_unknown_keys_refetch_at_most_every_30_s() {
    let (old, new, stranger) = (
        TestKey::load("rsa-1"),
        TestKey::load("rsa-2"),
        TestKey::load("ec-1"),
    );
    let idp = IdentityProvider::start(jwks(&[&old])).await;
    let stack = guarded(&idp.url, &[]).start().await;
    let open = stack.http();
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "fetched once at start"
    );
    let by_old = open.with_token(&old.sign(&claims("alice", API_SCOPES)));
    let user = by_old.create_user(&unique_email("rotate")).await;
    let path = format!("/users/{user}");

    // The provider rotates: the new key is published, the old one retired.
    *idp.keys.lock().unwrap() = jwks(&[&new]);
    let by_new = open.with_token(&new.sign(&claims("alice", API_SCOPES)));
    let reply = by_new.get(&path).await;
    assert_eq!(
        reply.status, 200,
        "the new key, through one refetch: {}",
        reply.text
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    // The retired key's tokens stop working (verified ones are forgotten with the keys).
    assert_invalid_token(&by_old.get(&path).await, "a token of the retired key");

    // Tokens naming unknown keys, many of them: no further fetch within 30 s.
    let mut forged = stranger.sign(&claims("mallory", API_SCOPES));
    for i in 0..20 {
        forged = forge(&forged, |h, _, _| h["kid"] = json!(format!("guess-{i}")));
        assert_invalid_token(&open.with_token(&forged).get(&path).await, "unknown kid");
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        2,
        "refetches are limited"
    );
    assert_eq!(by_new.get(&path).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_allows_exactly_its_burst_per_client_and_says_when_to_return() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::load("rsa-1");
    let stack = guarded(
        &write_jwks(dir.path(), &[&key]),
        &["--rate-limit", "1/m,burst=5"],
    )
    .start()
    .await;
    let open = stack.http();
    let alice = open.with_token(&key.sign(&claims("alice", API_SCOPES)));
    let path = "/orders?limit=1";

    for remaining in (0..5).rev() {
        let reply = alice.get(path).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"default\";q=5;w=300")
        );
        let expected = format!("\"default\";r={remaining};t={}", (5 - remaining) * 60);
        assert_eq!(reply.header("ratelimit"), Some(expected.as_str()));
    }
    let refused = alice.get(path).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.json()["code"], "RESOURCE_EXHAUSTED");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        refused.header("ratelimit"),
        Some(format!("\"default\";r=0;t={retry}").as_str())
    );
    // Another subject has a bucket of its own, even with the same address.
    let bob = open.with_token(&key.sign(&claims("bob", API_SCOPES)));
    assert_eq!(bob.get(path).await.status, 200);
    // Same subject, a new token: the same bucket.
    let alice_again = open.with_token(&key.sign(&claims("alice", "orders:read")));
    assert_eq!(alice_again.get(path).await.status, 429);
    // Health checks are never limited.
    assert_eq!(alice.get("/health").await.status, 200);
    // Bad tokens are charged to the address: five, then 429 before any verification.
    for _ in 0..5 {
        assert_eq!(open.get(path).await.status, 401);
    }
    assert_eq!(open.get(path).await.status, 429);

    // The buckets in memory are reported (the sweep runs every 10 s). Each look is by
    // a new operator subject, which has a bucket of its own.
    let looks = AtomicUsize::new(0);
    eventually(Duration::from_secs(25), "the bucket gauge", || {
        let subject = format!("operator-{}", looks.fetch_add(1, Ordering::SeqCst));
        let operator = open.with_token(&key.sign(&claims(&subject, "tandem:admin")));
        async move {
            let text = operator.get("/metrics").await.text;
            text.lines()
                .find(|l| l.starts_with("tandem_edge_rate_limit_keys{limiter=\"client\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .filter(|n| *n >= 3.0)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_through_a_trusted_proxy() {
    let trusting = StackBuilder::edge()
        .edge_args(&[
            "--rate-limit",
            "1/m,burst=2",
            "--trusted-proxies",
            "127.0.0.1",
        ])
        .start()
        .await;
    let untrusting = StackBuilder::edge()
        .edge_args(&["--rate-limit", "1/m,burst=2"])
        .start()
        .await;
    let get = |http: Http, client: &'static str| async move {
        http.send(
            http.request(Method::GET, "/orders?limit=1")
                .header("x-forwarded-for", client),
        )
        .await
        .status
    };
    // Behind a trusted proxy each client has its own bucket of 2.
    for client in ["198.51.100.1", "198.51.100.2"] {
        let codes = [
            get(trusting.http(), client).await,
            get(trusting.http(), client).await,
            get(trusting.http(), client).await,
        ];
        assert_eq!(codes, [200, 200, 429], "{client}");
    }
    // From an untrusted peer the header is the client's own word: one bucket.
    let codes = [
        get(untrusting.http(), "198.51.100.1").await,
        get(untrusting.http(), "198.51.100.2").await,
        get(untrusting.http(), "198.51.100.3").await,
    ];
    assert_eq!(codes, [200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_token_locks_the_address_out_right_guesses_included() {
    let stack = StackBuilder::edge()
        .edge_args(&["--admin-auth-limit", "1/m,burst=3"])
        .start()
        .await;
    let open = stack.http();
    for guess in ["a", "b", "c"] {
        let reply = open.with_token(guess).get("/admin/routing").await;
        assert_eq!(reply.status, 401, "{}", reply.text);
    }
    let locked = open.with_token("d").get("/admin/routing").await;
    assert_eq!(locked.status, 429, "{}", locked.text);
    assert!(locked.header("retry-after").is_some());
    let right = open.with_token(ADMIN_TOKEN).get("/admin/routing").await;
    assert_eq!(
        right.status, 429,
        "a hit must look like a miss while locked out"
    );
    // The public API is not affected.
    assert_eq!(open.get("/orders?limit=1").await.status, 200);
}

/// curl against the edge's HTTPS port, trusting `ca`: (HTTP version, status), or None
/// when the handshake fails.
fn curl(port: u16, ca: &Path) -> Option<(String, String)> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(ca)
        .arg(format!("https://localhost:{port}/health"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (version, code) = text.split_once(' ')?;
    (out.status.success() && code != "000").then(|| (version.to_owned(), code.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_curl_and_a_renewed_certificate_on_sighup() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(fixtures.join("cert-1.pem"), &cert).unwrap();
    std::fs::copy(fixtures.join("key-1.pem"), &key).unwrap();
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let mut stack = StackBuilder::edge()
        .binary(Service::Edge)
        .edge_args(&["--tls-cert", &cert_arg, "--tls-key", &key_arg])
        .start()
        .await;
    let port = stack.addr(Service::Edge).port();
    let (first, second) = (fixtures.join("cert-1.pem"), fixtures.join("cert-2.pem"));

    let answered = eventually(Duration::from_secs(10), "an HTTPS answer", || {
        let first = first.clone();
        async move { curl(port, &first) }
    })
    .await;
    assert_eq!(
        answered,
        ("2".to_owned(), "200".to_owned()),
        "HTTP/2 by ALPN"
    );
    assert_eq!(
        curl(port, &second),
        None,
        "only the first certificate is served"
    );

    // Renewal: new files in place, then SIGHUP (a file watcher would also pick it up).
    std::fs::copy(fixtures.join("cert-2.pem"), &cert).unwrap();
    std::fs::copy(fixtures.join("key-2.pem"), &key).unwrap();
    stack.signal(Service::Edge, nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the renewed certificate", || {
        let second = second.clone();
        async move { curl(port, &second) }
    })
    .await;
    assert_eq!(curl(port, &first), None, "the old certificate is gone");
    // Plain HTTP on the HTTPS port gets nothing useful, and the edge carries on.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/health")).await;
    assert!(plain.map(|r| r.status().as_u16() != 200).unwrap_or(true));
    assert!(curl(port, &second).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_subject_and_scopes_and_never_holds_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::load("ec-1");
    let jwks_path = write_jwks(dir.path(), &[&key]);
    let stack = guarded(&jwks_path, &[]).binary(Service::Edge).start().await;
    let token = key.sign(&claims("subject-in-the-log", API_SCOPES));
    let http = stack.http().with_token(&token);
    let user = http.create_user(&unique_email("logs")).await;
    assert_eq!(http.get(&format!("/users/{user}")).await.status, 200);
    let edge = stack.proc(Service::Edge);
    let line = eventually(Duration::from_secs(5), "the access log line", || async {
        edge.output()
            .lines()
            .find(|l| l.contains("answered") && l.contains(&user))
            .map(str::to_owned)
    })
    .await;
    assert!(line.contains("subject-in-the-log"), "{line}");
    assert!(line.contains("users:read"), "{line}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !edge.output().contains(signature),
        "the token leaked into the log"
    );
}

async fn ejection(http: &Http) -> Value {
    http.with_token(ADMIN_TOKEN)
        .get("/admin/routing")
        .await
        .json()["ejection"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_flavor_is_ejected_probed_and_taken_back_and_both_are_never_out() {
    let mut stack = StackBuilder::edge()
        .binary(Service::UserV1)
        .binary(Service::UserV2)
        .p(0)
        .edge_args(&["--eject-after", "3", "--eject-base-seconds", "1"])
        .start()
        .await;
    let http = stack.http();
    let user = http.create_user(&unique_email("eject")).await;
    let path = format!("/users/{user}");
    assert_eq!(http.get(&path).await.served_by(), "user-svc-v2");

    // v2 dies: its calls fail over to v1 (clients see no error) until it is ejected.
    stack.kill(Service::UserV2).await;
    for _ in 0..3 {
        let reply = http.get(&path).await;
        assert_eq!(
            (reply.status, reply.served_by()),
            (200, "user-svc-v1"),
            "{}",
            reply.text
        );
    }
    let state = ejection(&http).await;
    assert_eq!(state["v2"]["state"], "open", "{state}");
    assert_eq!(state["v2"]["ejections"], 1);
    let metrics = http.with_token(ADMIN_TOKEN).get("/metrics").await.text;
    assert!(
        metrics.contains("tandem_edge_upstream_ejected{upstream=\"user-svc-v2\"} 1"),
        "{metrics}"
    );
    // Still dead when its probe goes: ejected again, for twice as long.
    eventually(
        Duration::from_secs(10),
        "a failed probe and a second ejection",
        || {
            let http = http.clone();
            let path = path.clone();
            async move {
                assert_eq!(http.get(&path).await.status, 200);
                let state = ejection(&http).await;
                (state["v2"]["ejections"] == 2).then_some(state)
            }
        },
    )
    .await;
    let state = ejection(&http).await;
    assert!(
        state["v2"]["reopensInSeconds"].as_f64().unwrap() > 1.0,
        "{state}"
    );

    // Never both: with v2 out, v1 failing too is not ejected (there would be nothing left).
    stack.kill(Service::UserV1).await;
    for _ in 0..5 {
        assert_eq!(http.get(&path).await.status, 503);
    }
    assert_eq!(ejection(&http).await["v1"]["state"], "closed");
    stack.start(Service::UserV1).await;

    // v2 comes back: the next probe succeeds and it serves again.
    stack.start(Service::UserV2).await;
    eventually(Duration::from_secs(15), "v2 back in service", || {
        let http = http.clone();
        let path = path.clone();
        async move {
            let reply = http.get(&path).await;
            (reply.status == 200 && reply.served_by() == "user-svc-v2").then_some(())
        }
    })
    .await;
    let state = ejection(&http).await;
    assert_eq!(
        (state["v2"]["state"].as_str(), state["v1"]["state"].as_str()),
        (Some("closed"), Some("closed")),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_order_service_answers_503_at_once_and_returns_after_a_probe() {
    let mut stack = StackBuilder::edge()
        .binary(Service::Orders)
        .edge_args(&["--eject-after", "3", "--eject-base-seconds", "1"])
        .start()
        .await;
    let http = stack.http();
    assert_eq!(http.get("/orders?limit=1").await.status, 200);
    stack.kill(Service::Orders).await;
    for _ in 0..3 {
        assert_eq!(http.get("/orders?limit=1").await.status, 503);
    }
    let refused = http.get("/orders?limit=1").await;
    assert_eq!(refused.status, 503);
    assert!(refused.text.contains("unavailable"), "{}", refused.text);
    assert_eq!(ejection(&http).await["orders"]["state"], "open");

    stack.start(Service::Orders).await;
    eventually(Duration::from_secs(15), "order-svc back in service", || {
        let http = http.clone();
        async move { (http.get("/orders?limit=1").await.status == 200).then_some(()) }
    })
    .await;
    assert_eq!(ejection(&http).await["orders"]["state"], "closed");
}
