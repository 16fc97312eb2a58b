//! R3: ApplyUserContact uses the index. The cost of applying a contact change to a user's
//! 1,000 orders, among 10,000 orders in all and among 1,000,000. Bar: ≤ 1.5×.

use std::time::Instant;

use order_svc::model::{Order, OrderItem};
use order_svc::store::SqliteOrderStore;
use serde::{Deserialize, Serialize};
use tandem::domain::{EmailCheck, EmailList, OrderId, OrderStatus, Price, UserId};
use tandem::proto::order::v1::ApplyUserContactRequest;
use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem_testkit::{Service, StackBuilder, domain_address as address};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Size {
    pub total_orders: usize,
    pub user_orders: usize,
    pub calls: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct R3 {
    pub sizes: Vec<Size>,
    /// Median at the largest size / median at the smallest.
    pub ratio: f64,
}

fn order(user_id: UserId, n: usize, emails: &EmailList) -> Order {
    let at =
        chrono::DateTime::from_timestamp_millis(1_764_000_000_000 + n as i64).unwrap_or_default();
    Order {
        order_id: OrderId::new_random(),
        user_id,
        items: vec![OrderItem {
            item_id: "thing".into(),
            quantity: 1,
            price: Price::parse("9.99").expect("a price"),
        }],
        emails: emails.clone(),
        delivery_address: address("1 Seed St"),
        status: OrderStatus::UnderProcess,
        contact_version: 0,
        created_at: at,
        updated_at: at,
    }
}

async fn measure(total: usize, user_orders: usize, calls: usize) -> anyhow::Result<Size> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("order_db.sqlite");
    let store = SqliteOrderStore::open(&db).await?;
    let emails = EmailList::parse(&["seed@bench.example".to_owned()], EmailCheck::Lenient)
        .map_err(|v| anyhow::anyhow!("{v}"))?;
    let target = UserId::new_random();
    // Ten orders per other user, the target's orders spread among them.
    let others: Vec<UserId> = (0..(total - user_orders) / 10 + 1)
        .map(|_| UserId::new_random())
        .collect();
    let every = total / user_orders;
    let mut batch = Vec::with_capacity(50_000);
    let mut placed = 0;
    eprintln!("R3: loading {total} orders");
    for n in 0..total {
        let owner = if n % every == 0 && placed < user_orders {
            placed += 1;
            target
        } else {
            others[n % others.len()]
        };
        batch.push(order(owner, n, &emails));
        if batch.len() == 50_000 {
            store.bulk_insert(std::mem::take(&mut batch)).await?;
        }
    }
    store.bulk_insert(batch).await?;
    drop(store);

    let stack = StackBuilder::new()
        .binary(Service::Orders)
        .order_store(&db)
        .env("RUST_LOG", "warn")
        .start()
        .await;
    let listen = stack.addr(Service::Orders);
    let mut client = OrderServiceClient::connect(format!("http://{listen}")).await?;
    let mut times = Vec::with_capacity(calls);
    // Version 1 and 2 warm the caches; the measured calls follow, each a real change.
    for version in 1..=(calls as i64 + 2) {
        let request = ApplyUserContactRequest {
            user_id: target.to_string(),
            contact_version: version,
            emails: vec![format!("v{version}@bench.example")],
            delivery_address: Some(address(&format!("{version} Index Rd")).to_proto()),
        };
        let started = Instant::now();
        let reply = client.apply_user_contact(request).await?.into_inner();
        let elapsed = started.elapsed();
        anyhow::ensure!(
            reply.modified_count == user_orders as i64,
            "expected {user_orders} orders modified, got {}",
            reply.modified_count
        );
        if version > 2 {
            times.push(elapsed.as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(Size {
        total_orders: total,
        user_orders,
        calls,
        median_ms: crate::r1::median(times.clone()),
        p90_ms: times[(times.len() * 9 / 10).min(times.len() - 1)],
        min_ms: times[0],
    })
}

pub async fn run(totals: &[usize], calls: usize) -> anyhow::Result<R3> {
    let mut sizes = Vec::new();
    for &total in totals {
        sizes.push(measure(total, 1000, calls).await?);
    }
    let ratio = sizes.last().map_or(f64::NAN, |l| l.median_ms)
        / sizes.first().map_or(f64::NAN, |f| f.median_ms);
    Ok(R3 { sizes, ratio })
}
