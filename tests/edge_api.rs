//! The REST contract of the edge, end to end over real user-svc v1/v2 and order-svc (in
//! this process, on port 0, over SQLite files): routes, envelopes, aliases, exact prices,
//! paging, and every class of error as JSON.

use reqwest::Method;
use serde_json::json;
use tandem_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_with_and_without_a_trailing_slash() {
    let stack = StackBuilder::edge().start().await;
    let http = &stack.http();
    for slash in ["", "/"] {
        let email = unique_email("slash");
        let created = http
            .post(&format!("/users{slash}"), &user_body(&email))
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
        let user_id = created.json()["user"]["userId"]
            .as_str()
            .unwrap()
            .to_owned();
        let got = http.get(&format!("/users/{user_id}{slash}")).await;
        assert_eq!(got.status, 200, "{}", got.text);
        let put = http
            .put(
                &format!("/users/{user_id}{slash}"),
                &json!({"deliveryAddress": address_json("2 St")}),
            )
            .await;
        assert_eq!(put.status, 200, "{}", put.text);

        let order = http
            .post(&format!("/orders{slash}"), &order_body(&user_id, &email))
            .await;
        assert_eq!(order.status, 201, "{}", order.text);
        let order_id = order.json()["order"]["orderId"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            http.get(&format!("/orders{slash}?userId={user_id}"))
                .await
                .status,
            200
        );
        assert_eq!(
            http.get(&format!("/orders/{order_id}{slash}")).await.status,
            200
        );
        let status = http
            .put(
                &format!("/orders/{order_id}/status{slash}"),
                &json!({"orderStatus": "shipping"}),
            )
            .await;
        assert_eq!(status.status, 200, "{}", status.text);
        let details = http
            .put(
                &format!("/orders/{order_id}/details{slash}"),
                &json!({"emails": [email]}),
            )
            .await;
        assert_eq!(details.status, 200, "{}", details.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_come_back_in_the_documented_shape() {
    let stack = StackBuilder::edge().start().await;
    let http = &stack.http();
    let email = unique_email("Robert.Williams");
    // Older clients send `state`; responses say `province`.
    let mut body = user_body(&email);
    body["deliveryAddress"] = json!({
        "street": "456 Elm Avenue", "city": "Ottawa", "state": "ON",
        "postalCode": "K2P 1L4", "country": "Canada"
    });
    let created = http
        .send(
            http.request(Method::POST, "/users")
                .header("content-type", "application/json; charset=utf-8")
                .header("x-user-version", "v2")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let json = created.json();
    assert_eq!(json["status"], "success");
    let user = &json["user"];
    let user_id = user["userId"].as_str().unwrap();
    uuid::Uuid::parse_str(user_id).unwrap();
    assert_eq!(
        created.header("location"),
        Some(format!("/users/{user_id}").as_str())
    );
    assert_eq!(created.served_by(), "user-svc-v2");
    assert_eq!(user["deliveryAddress"]["province"], "ON");
    assert_eq!(user["emails"], json!([email]));
    assert_eq!(
        (user["firstName"].clone(), user["phoneNumber"].clone()),
        (json!("Robert"), json!("+1-438-222-7890"))
    );
    let created_at = user["createdAt"].as_str().expect("v2 stamps createdAt");
    chrono::DateTime::parse_from_rfc3339(created_at).unwrap();
    assert!(created_at.ends_with('Z'), "UTC: {created_at}");
    for internal in ["_id", "contactVersion", "contact_version"] {
        assert!(user.get(internal).is_none(), "{internal} leaked: {user}");
    }

    let fetched = http
        .send(
            http.request(Method::GET, &format!("/users/{user_id}"))
                .header("x-user-version", "v1"),
        )
        .await;
    assert_eq!(fetched.served_by(), "user-svc-v1");
    assert_eq!(fetched.json()["user"], *user);

    let changed = http
        .put(
            &format!("/users/{user_id}"),
            &json!({"emails": [unique_email("new")]}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.json()["status"], "success");
    assert_eq!(
        changed.json()["after"]["deliveryAddress"],
        user["deliveryAddress"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_keep_exact_prices_and_page_through() {
    let stack = StackBuilder::edge().start().await;
    let http = &stack.http();
    let email = unique_email("orders");
    let user_id = http.create_user(&email).await;

    // Raw text: a JSON library in the test would round the prices before they left.
    // `userEmails` is an alias of `emails` in order bodies.
    let text = format!(
        r#"{{"userId":"{user_id}","items":[{{"itemId":"Study table","quantity":1,"price":123456789012345678.99}},
            {{"itemId":"Chair","quantity":2,"price":15.990}}],"userEmails":["{email}"],
            "deliveryAddress":{{"street":"456 Elm Avenue","city":"Ottawa","province":"ON","postalCode":"K2P 1L4","country":"Canada"}}}}"#
    );
    let created = http
        .send(
            http.request(Method::POST, "/orders")
                .header("content-type", "application/json")
                .body(text),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    // Exact decimals, byte for byte, not floats rounded on the way.
    assert!(
        created.text.contains(r#""price":123456789012345678.99"#),
        "{}",
        created.text
    );
    assert!(
        created.text.contains(r#""price":15.990"#),
        "{}",
        created.text
    );
    let order = &created.json()["order"];
    let order_id = order["orderId"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/orders/{order_id}").as_str())
    );
    assert_eq!(order["orderStatus"], "under process");
    assert_eq!(order["emails"], json!([email]));
    for key in ["createdAt", "updatedAt"] {
        chrono::DateTime::parse_from_rfc3339(order[key].as_str().unwrap()).unwrap();
    }

    for _ in 0..4 {
        http.post("/orders", &order_body(&user_id, &email)).await;
    }
    let mut seen = vec![];
    let mut path = format!("/orders?userId={user_id}&limit=2");
    loop {
        let page = http.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let json = page.json();
        assert!(json["orders"].as_array().unwrap().len() <= 2);
        seen.extend(
            json["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["orderId"].clone()),
        );
        match json["nextPageToken"].as_str() {
            Some(token) => path = format!("/orders?userId={user_id}&limit=2&pageToken={token}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0], json!(order_id));

    // Status: forward, the same again (a no-op), then backward (refused).
    let shipping = http
        .put(
            &format!("/orders/{order_id}/status"),
            &json!({"orderStatus": "shipping"}),
        )
        .await;
    assert_eq!(shipping.json()["after"]["orderStatus"], "shipping");
    let again = http
        .put(
            &format!("/orders/{order_id}/status"),
            &json!({"orderStatus": "shipping"}),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["after"], shipping.json()["after"]);
    let back = http
        .put(
            &format!("/orders/{order_id}/status"),
            &json!({"orderStatus": "under process"}),
        )
        .await;
    assert_eq!(
        (back.status, back.json()["code"].clone()),
        (400, json!("FAILED_PRECONDITION"))
    );
    assert_eq!(back.fields(), ["orderStatus"]);
    let filtered = http.get("/orders?status=shipping&limit=1000").await;
    assert!(
        filtered.json()["orders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["orderId"] == json!(order_id))
    );

    // A shipped address is history.
    let moved = http
        .put(
            &format!("/orders/{order_id}/details"),
            &json!({"deliveryAddress": address_json("9 New St")}),
        )
        .await;
    assert_eq!(
        (moved.status, moved.json()["code"].clone()),
        (400, json!("FAILED_PRECONDITION"))
    );
    assert_eq!(moved.fields(), ["deliveryAddress"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_with_the_documented_status() {
    let mut stack = StackBuilder::edge().start().await;
    let http = stack.http();
    let email = unique_email("errors");
    let user_id = http.create_user(&email).await;
    let raw = |method: Method, path: &str, content_type: &str, body: &str| {
        http.request(method, path)
            .header("content-type", content_type.to_owned())
            .body(body.to_owned())
    };
    let check = |reply: &Reply, status: u16, code: &str| {
        assert_eq!(reply.status, status, "{}", reply.text);
        let json = reply.json();
        assert_eq!(
            (json["status"].as_str(), json["code"].as_str()),
            (Some("error"), Some(code)),
            "{json}"
        );
        assert!(
            json["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{json}"
        );
        assert!(json["fields"].is_array(), "{json}");
    };

    let malformed = http
        .send(raw(
            Method::POST,
            "/users",
            "application/json",
            "{\"emails\": [",
        ))
        .await;
    check(&malformed, 400, "INVALID_ARGUMENT");
    assert!(
        malformed.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON")
    );

    let extra = http
        .put(
            &format!("/users/{user_id}"),
            &json!({"emails": [email], "firstName": "Bob"}),
        )
        .await;
    check(&extra, 400, "INVALID_ARGUMENT");
    assert_eq!(extra.json()["detail"], "Invalid field: firstName");

    let wrong_type = http
        .post(
            "/users",
            &json!({"emails": "a@b.co", "deliveryAddress": address_json("1")}),
        )
        .await;
    check(&wrong_type, 400, "INVALID_ARGUMENT");
    assert_eq!(wrong_type.fields(), ["emails"]);

    let missing = http.post("/users", &json!({"emails": ["a@b.co"]})).await;
    assert_eq!(missing.fields(), ["deliveryAddress"]);

    let bad_values = http
        .post(
            "/users",
            &json!({"emails": [], "deliveryAddress": address_json("")}),
        )
        .await;
    check(&bad_values, 400, "INVALID_ARGUMENT");
    assert_eq!(bad_values.fields(), ["emails", "deliveryAddress.street"]);

    let nothing = http.put(&format!("/users/{user_id}"), &json!({})).await;
    check(&nothing, 400, "INVALID_ARGUMENT");

    check(
        &http
            .send(raw(Method::POST, "/users", "text/plain", "{}"))
            .await,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    check(
        &http
            .send(http.request(Method::POST, "/orders").body("{}"))
            .await,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    );

    let huge = format!(r#"{{"emails":["{}"]}}"#, "a".repeat(70 * 1024));
    check(
        &http
            .send(raw(Method::POST, "/users", "application/json", &huge))
            .await,
        413,
        "PAYLOAD_TOO_LARGE",
    );

    check(&http.get("/nowhere").await, 404, "NOT_FOUND");
    check(
        &http.send(http.request(Method::DELETE, "/users")).await,
        405,
        "METHOD_NOT_ALLOWED",
    );
    check(
        &http.get(&format!("/users/{}", uuid::Uuid::new_v4())).await,
        404,
        "NOT_FOUND",
    );
    check(
        &http.get(&format!("/orders/{}", uuid::Uuid::new_v4())).await,
        404,
        "NOT_FOUND",
    );
    let not_uuid = http.get("/users/not-a-uuid").await;
    check(&not_uuid, 400, "INVALID_ARGUMENT");
    assert_eq!(not_uuid.fields(), ["userId"]);

    let taken = http.post("/users", &user_body(&email.to_uppercase())).await;
    check(&taken, 409, "ALREADY_EXISTS");
    assert_eq!(taken.fields(), ["emails[0]"]);

    let bad_query = http.get("/orders?status=lost&limit=ten").await;
    check(&bad_query, 400, "INVALID_ARGUMENT");
    let unknown_param = http.get("/orders?colour=red").await;
    assert_eq!(unknown_param.json()["detail"], "Invalid field: colour");
    let negative = http.get("/orders?limit=-5").await;
    assert_eq!(negative.fields(), ["limit"]);

    let forced = http
        .send(
            http.request(Method::GET, &format!("/users/{user_id}"))
                .header("x-user-version", "v3"),
        )
        .await;
    check(&forced, 400, "INVALID_ARGUMENT");
    assert_eq!(forced.fields(), ["X-User-Version"]);

    // A service down: 503 naming it, and /health names it too.
    stack.stop(Service::Orders).await;
    let down = http.post("/orders", &order_body(&user_id, &email)).await;
    check(&down, 503, "UNAVAILABLE");
    assert!(
        down.json()["detail"]
            .as_str()
            .unwrap()
            .contains("order service")
    );
    let health = http.get("/health").await;
    assert_eq!(health.status, 503);
    assert_ne!(health.json()["dependencies"]["order-svc"], "ok");
    assert_eq!(health.json()["dependencies"]["user-svc-v1"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_request_ids() {
    let stack = StackBuilder::edge().start().await;
    let http = &stack.http();
    let health = http.get("/health").await;
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, json!("ok"))
    );

    let mine = http
        .send(
            http.request(Method::GET, "/health")
                .header("x-request-id", "req-from-client-42"),
        )
        .await;
    assert_eq!(mine.header("x-request-id"), Some("req-from-client-42"));
    let made = http.get("/nowhere").await;
    uuid::Uuid::parse_str(made.header("x-request-id").unwrap()).expect("a generated id");

    // The id travels to user-svc in gRPC metadata and is kept with the event it causes.
    let user_id = http.create_user(&unique_email("rid")).await;
    let put = http
        .send(
            http.request(Method::PUT, &format!("/users/{user_id}"))
                .header("content-type", "application/json")
                .header("x-request-id", "rid-travels-9")
                .body(json!({"deliveryAddress": address_json("5 Fifth Ave")}).to_string()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    use user_svc::store::UserStore;
    let store = user_svc::store::SqliteUserStore::open(&stack.user_db())
        .await
        .unwrap();
    let events = store
        .claim_outbox("test", std::time::Duration::from_secs(30), 100)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.origin.request_id.as_deref() == Some("rid-travels-9")),
        "{events:?}"
    );

    let metrics = http.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("tandem_edge_http_requests_total{"),
        "{}",
        metrics.text
    );
    assert!(
        metrics.text.contains(r#"route="/users/{user_id}""#)
            || metrics.text.contains(r#"route="/users/{userId}""#),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains(r#"tandem_edge_user_upstream_requests_total{flavor="v1",outcome="ok"}"#),
        "{}",
        metrics.text
    );
    assert!(
        metrics.text.contains("tandem_edge_routing_p 100"),
        "{}",
        metrics.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_is_continued_to_the_service_and_returned() {
    // Each call's own line ("ok") is at debug level.
    let stack = StackBuilder::edge()
        .binary(Service::UserV1)
        .env("RUST_LOG", "info,tandem_serving=debug")
        .p(100)
        .start()
        .await;
    let http = stack.http();
    let id = http.create_user(&unique_email("trace")).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let reply = http
        .send(
            http.request(Method::GET, &format!("/users/{id}"))
                .header("traceparent", &sent),
        )
        .await;
    assert_eq!(reply.status, 200);
    let back = reply.header("traceparent").unwrap().to_owned();
    let parts: Vec<&str> = back.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace_id, "01"),
        "{back}"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the edge answers with a span of its own"
    );
    // The service's log line of that call carries the same trace id.
    let v1 = stack.proc(Service::UserV1);
    eventually(
        std::time::Duration::from_secs(5),
        "the trace id in user-svc's log",
        || async { v1.output().contains(trace_id).then_some(()) },
    )
    .await;

    // No traceparent, or a broken one: a new trace, still answered.
    for header in [
        None,
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    ] {
        let mut request = http.request(Method::GET, &format!("/users/{id}"));
        if let Some(h) = header {
            request = request.header("traceparent", h);
        }
        let reply = http.send(request).await;
        let fresh = reply.header("traceparent").unwrap();
        assert_eq!(fresh.len(), 55, "{fresh}");
        assert!(
            !fresh.contains("00000000000000000000000000000000"),
            "{fresh}"
        );
    }
}
