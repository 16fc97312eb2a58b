//! The soak: a steady mixed load for many minutes (shadowing a tenth of the reads), and
//! each process's memory after one minute compared with at the end. Growth beyond noise
//! would be a leak; the edge's stats are full after 15 minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stack::Stack;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Soak {
    pub minutes: f64,
    pub rate: f64,
    pub requests: u64,
    pub errors: u64,
    /// (process, MiB after one minute, MiB at the end)
    pub memory: Vec<(String, f64, f64)>,
}

fn address() -> serde_json::Value {
    serde_json::json!({"street": "1 Soak St", "city": "Ottawa", "province": "ON", "postalCode": "K2P 1L4", "country": "Canada"})
}

pub async fn run(minutes: f64, rate: f64) -> anyhow::Result<Soak> {
    let stack = Stack::start(crate::stack::Options {
        sync: true,
        ..crate::stack::Options::new(50)
    })
    .await?;
    let http = Stack::http_client()?;
    let mut users = Vec::new();
    for i in 0..200 {
        let email = format!("soak{i}.{}@bench.example", uuid::Uuid::new_v4().simple());
        users.push(stack.create_user(&http, &email, address()).await?);
    }
    // Shadowing on, so its queue and examples are part of what must stay flat; past 15
    // minutes the edge's per-second stats are full and must stop growing.
    stack
        .admin(
            &http,
            "PUT",
            "/admin/shadow",
            serde_json::json!({"fraction": 0.1}),
        )
        .await?;
    let users = Arc::new(users);
    let (requests, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut after_one_minute = None;
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    eprintln!("soak: {minutes} minutes at {rate} requests/s");
    while started.elapsed() < total {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        if after_one_minute.is_none() && started.elapsed() >= Duration::from_secs(60) {
            after_one_minute = Some(stack.memory_mib());
            eprintln!("soak: memory after 1 minute recorded");
        }
        let (http, users, requests, errors, edge) = (
            http.clone(),
            users.clone(),
            requests.clone(),
            errors.clone(),
            stack.edge.clone(),
        );
        tasks.spawn(async move {
            let user = &users[i as usize % users.len()];
            // 70 % reads, 20 % contact changes (events through the sync), 10 % orders.
            let request = match i % 10 {
                0 | 1 => http
                    .put(format!("{edge}/users/{user}"))
                    .json(&serde_json::json!({"emails": [format!("s{i}.{}@bench.example", uuid::Uuid::new_v4().simple())]})),
                2 => http.post(format!("{edge}/orders")).json(&serde_json::json!({
                    "userId": user, "items": [{"itemId": "thing", "quantity": 1, "price": 9.99}],
                    "emails": ["o@bench.example"], "deliveryAddress": address()
                })),
                3 | 4 => http.get(format!("{edge}/orders?userId={user}&limit=20")),
                _ => http.get(format!("{edge}/users/{user}")),
            };
            let ok = request.send().await.is_ok_and(|r| r.status().is_success());
            requests.fetch_add(1, Ordering::Relaxed);
            if !ok {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    let end = stack.memory_mib();
    let first = after_one_minute.unwrap_or_else(|| end.clone());
    Ok(Soak {
        minutes,
        rate,
        requests: requests.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        memory: first
            .into_iter()
            .zip(end)
            .map(|((name, a), (_, b))| (name, a, b))
            .collect(),
    })
}
