//! L1: the list call, `GET /orders?status=delivered`, answering a page of 50 delivered
//! orders of 3 items each (about 27 KB of JSON) under wrk -t2 -c32. The orders are made
//! the way a user makes them, through the API: created, shipped, delivered. Reports
//! throughput, latency and the CPU each process spends per request.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::routes::{address, run_wrk, script};
use crate::stack::Stack;

pub const ORDERS: usize = 50;
pub const CONNECTIONS: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListRun {
    pub seconds: f64,
    pub orders_per_page: usize,
    pub body_bytes: usize,
    pub connections: usize,
    pub requests: u64,
    pub throughput: f64,
    pub non_2xx: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// CPU µs per request of each process (the load generator, wrk, is not counted).
    pub cpu_us: Vec<(String, f64)>,
}

pub async fn run(duration: Duration) -> anyhow::Result<ListRun> {
    let stack = Stack::start(crate::stack::Options::new(100)).await?;
    let http = Stack::http_client()?;
    let email = format!("lists.{}@bench.example", uuid::Uuid::new_v4().simple());
    let address: serde_json::Value = serde_json::from_str(address())?;
    let user = stack.create_user(&http, &email, address.clone()).await?;
    eprintln!("L1: creating, shipping and delivering {ORDERS} orders of 3 items");
    for i in 0..ORDERS {
        let order = serde_json::json!({
            "userId": user,
            "items": [
                {"itemId": format!("book-{i}"), "quantity": 1, "price": 12.5},
                {"itemId": format!("lamp-{i}"), "quantity": 2, "price": 39.99},
                {"itemId": format!("mug-{i}"), "quantity": 4, "price": 7.25}
            ],
            "emails": [email],
            "deliveryAddress": address,
        });
        let created: serde_json::Value = http
            .post(format!("{}/orders", stack.edge))
            .json(&order)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["order"]["orderId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no order id in {created}"))?
            .to_owned();
        for status in ["shipping", "delivered"] {
            http.put(format!("{}/orders/{id}/status", stack.edge))
                .json(&serde_json::json!({"orderStatus": status}))
                .send()
                .await?
                .error_for_status()?;
        }
    }
    let path = format!("/orders?status=delivered&limit={ORDERS}");
    let page = http
        .get(format!("{}{path}", stack.edge))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let listed: serde_json::Value = serde_json::from_slice(&page)?;
    let count = listed["orders"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(count == ORDERS, "the page holds {count} orders: {listed}");

    let dir = tempfile::tempdir()?;
    let text = script("GET", &path, "", &[]);
    // Warm-up, unmeasured.
    run_wrk(&stack.edge, &text, CONNECTIONS, duration / 5, dir.path())?;
    let before = stack.cpu_seconds();
    let r = run_wrk(&stack.edge, &text, CONNECTIONS, duration, dir.path())?;
    let after = stack.cpu_seconds();
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let requests = f("requests") as u64;
    let cpu_us = crate::stack::cpu_us_per_request(&before, &after, requests);
    Ok(ListRun {
        seconds: duration.as_secs_f64(),
        orders_per_page: ORDERS,
        body_bytes: page.len(),
        connections: CONNECTIONS,
        requests,
        throughput: requests as f64 / (f("duration_us") / 1e6),
        non_2xx: f("non2xx") as u64,
        p50_ms: f("p50") / 1000.0,
        p99_ms: f("p99") / 1000.0,
        p999_ms: f("p999") / 1000.0,
        cpu_us,
    })
}
