//! Orders in an embedded SQLite file. Items are a JSON column with prices as decimal
//! strings, so no price ever passes through binary floating point.

use std::borrow::Cow;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde::Deserialize;
use tandem::domain::{
    Address, ContactChange, EmailList, OrderId, OrderStatus, Price, UserContact, UserId,
};
use tandem_storage::sqlite::{self, Database, SqliteError};

use super::{
    ApplyOutcome, DetailsOutcome, OrderStore, StatusOutcome, StoreError, status_outcome,
    statuses_before,
};
use crate::model::{ListFilter, Order, OrderItem, PageCursor};
use crate::wire::{Page, PageEncoder};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE orders (
    order_id        TEXT PRIMARY KEY NOT NULL,
    user_id         TEXT NOT NULL,
    items           TEXT NOT NULL,      -- JSON [["itemId",quantity,"29.99"]] (items_json)
    emails          TEXT NOT NULL,      -- JSON array
    street          TEXT NOT NULL,
    city            TEXT NOT NULL,
    province        TEXT NOT NULL,
    postal_code     TEXT NOT NULL,
    country         TEXT NOT NULL,
    order_status    TEXT NOT NULL
        CHECK (order_status IN ('under process', 'shipping', 'delivered')),
    contact_version INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,   -- ms since the epoch
    updated_at      INTEGER NOT NULL
) STRICT;
-- Listing pages by (created_at, order_id), with or without filters, and the per-user
-- bulk update of ApplyUserContact, all walk an index. (Migration 2 reshapes this table.)
CREATE INDEX orders_by_status ON orders (order_status, created_at, order_id);
CREATE INDEX orders_by_user ON orders (user_id, created_at, order_id);
CREATE INDEX orders_by_time ON orders (created_at, order_id);
"#,
    r#"
-- Orders clustered by user: the rows of one user's orders sit together, so
-- ApplyUserContact touches a few pages of one user whatever the table's size (with rows
-- in insertion order, 1,000 orders of one user lay on ~1,000 pages: 14 ms at 10k orders
-- and 45 ms at 1M; clustered, 1.8 ms at both). Lookups by order id go through a unique
-- index.
CREATE TABLE orders_clustered (
    order_id        TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    items           TEXT NOT NULL,
    emails          TEXT NOT NULL,
    street          TEXT NOT NULL,
    city            TEXT NOT NULL,
    province        TEXT NOT NULL,
    postal_code     TEXT NOT NULL,
    country         TEXT NOT NULL,
    order_status    TEXT NOT NULL
        CHECK (order_status IN ('under process', 'shipping', 'delivered')),
    contact_version INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (user_id, created_at, order_id)
) STRICT, WITHOUT ROWID;
INSERT INTO orders_clustered SELECT order_id, user_id, items, emails, street, city, province,
    postal_code, country, order_status, contact_version, created_at, updated_at FROM orders;
DROP TABLE orders;
ALTER TABLE orders_clustered RENAME TO orders;
CREATE UNIQUE INDEX orders_by_id ON orders (order_id);
CREATE INDEX orders_by_status ON orders (order_status, created_at, order_id);
CREATE INDEX orders_by_time ON orders (created_at, order_id);
"#,
    r#"
-- The items as the list call sends them: each item's OrderItem message as the `items`
-- field of an Order (items_wire), written once with the order (items never change),
-- so a page copies them instead of parsing the JSON column (bench/FINDINGS.md §20).
-- NULL in rows written before this migration, or by a binary of before: their items
-- are read from the JSON column, which every row keeps.
ALTER TABLE orders ADD COLUMN items_wire BLOB;
"#,
];

pub struct SqliteOrderStore {
    db: Database,
}

impl SqliteOrderStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sqlite::open(path, MIGRATIONS)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { db })
    }
}

impl SqliteOrderStore {
    /// Inserts many orders in one transaction: for imports and benchmarks, where one
    /// transaction per order (as `create_order` does) would take hours.
    pub async fn bulk_insert(&self, orders: Vec<Order>) -> Result<(), StoreError> {
        self.db
            .write(move |tx| {
                let mut insert = tx.prepare_cached(INSERT_ORDER)?;
                for order in &orders {
                    insert.execute(params_from_iter(order_params(order)))?;
                }
                Ok(())
            })
            .await
    }
}

/// The values of an order, in STORED_COLUMNS order.
fn order_params(order: &Order) -> Vec<Box<dyn rusqlite::ToSql>> {
    let a = &order.delivery_address;
    vec![
        Box::new(order.order_id.to_string()),
        Box::new(order.user_id.to_string()),
        Box::new(items_json(&order.items)),
        Box::new(json_list(order.emails.to_strings())),
        Box::new(a.street().to_owned()),
        Box::new(a.city().to_owned()),
        Box::new(a.province().to_owned()),
        Box::new(a.postal_code().to_owned()),
        Box::new(a.country().to_owned()),
        Box::new(order.status.as_str()),
        Box::new(order.contact_version),
        Box::new(millis(order.created_at)),
        Box::new(millis(order.updated_at)),
        Box::new(items_wire(&order.items)),
    ]
}

impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        if e.is_transient() {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Internal(e.to_string())
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        SqliteError::from(e).into()
    }
}

/// The emails column, a JSON array, each address borrowed from the column wherever it
/// holds no escapes.
#[derive(Deserialize)]
struct StoredEmails<'a>(#[serde(borrow)] Vec<Cow<'a, str>>);

/// An item as the JSON column holds it: `["book-1",2,"29.99"]` (item id, quantity, price
/// as text). Rows written before 2026-12 hold `{"itemId":…,"quantity":…,"price":…}`;
/// serde reads a struct from either, so both forms load, and a binary of before reads
/// the new form too. The array form costs the list call half the parsing (no keys to
/// read and match: bench/FINDINGS.md §10). Reading borrows the text from the column
/// wherever it holds no escapes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredItem<'a> {
    #[serde(borrow)]
    item_id: Cow<'a, str>,
    quantity: i64,
    #[serde(borrow)]
    price: Cow<'a, str>,
}

fn items_json(items: &[OrderItem]) -> String {
    let stored: Vec<(&str, i64, String)> = items
        .iter()
        .map(|i| (i.item_id.as_str(), i.quantity, i.price.to_string()))
        .collect();
    serde_json::to_string(&stored).expect("items always serialize")
}

/// The `items_wire` column: each item as the `items` field of an `Order` message.
fn items_wire(items: &[OrderItem]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(items.len() * 32);
    for item in items {
        crate::wire::item(
            &mut wire,
            &item.item_id,
            item.quantity,
            &item.price.to_string(),
        );
    }
    wire
}

fn json_list(values: Vec<String>) -> String {
    serde_json::to_string(&values).expect("strings always serialize")
}

/// The columns every row has had from the first migration on.
macro_rules! order_columns {
    () => {
        "order_id, user_id, items, emails, street, city, province, \
         postal_code, country, order_status, contact_version, created_at, updated_at"
    };
}
#[cfg(test)]
const ORDER_COLUMNS: &str = order_columns!();
/// What an order is read and written as: the first migration's columns and
/// `items_wire`, in the order [`StoredOrder::read`] reads them.
macro_rules! stored_columns {
    () => {
        concat!(order_columns!(), ", items_wire")
    };
}
const STORED_COLUMNS: &str = stored_columns!();
const LOAD_ORDER: &str = concat!(
    "SELECT ",
    stored_columns!(),
    " FROM orders WHERE order_id = ?1"
);
const INSERT_ORDER: &str = concat!(
    "INSERT INTO orders (",
    stored_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
);

fn corrupt(order_id: &str, what: &str) -> StoreError {
    StoreError::Internal(format!("stored order {order_id}: bad {what}"))
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// A text column, borrowed from SQLite's row buffer: the order's id, user id, status and
/// JSON columns are read in place, not copied into strings first.
fn text<'r>(row: &'r Row<'_>, column: usize) -> rusqlite::Result<&'r str> {
    Ok(row.get_ref(column)?.as_str()?)
}

/// An order's row, its text read in place from SQLite's buffer (the JSON columns parsed,
/// item ids, prices and emails borrowed wherever they hold no escapes), before it becomes
/// an [`Order`] (ids and prices parsed into domain values) or, on the list path, the
/// bytes of its message, written from the row as it was stored (bench/FINDINGS.md §11,
/// §18).
struct StoredOrder<'r> {
    order_id: &'r str,
    user_id: &'r str,
    /// The JSON column, parsed only when needed: a list page copies `items_wire`.
    items_json: &'r str,
    items_wire: Option<&'r [u8]>,
    emails: StoredEmails<'r>,
    /// Street, city, province, postal code, country.
    address: [&'r str; 5],
    status: OrderStatus,
    contact_version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'r> StoredOrder<'r> {
    fn read(row: &'r Row<'_>) -> rusqlite::Result<Result<StoredOrder<'r>, StoreError>> {
        let order_id = text(row, 0)?;
        let user_id = text(row, 1)?;
        let items = text(row, 2)?;
        let emails = text(row, 3)?;
        let address = [
            text(row, 4)?,
            text(row, 5)?,
            text(row, 6)?,
            text(row, 7)?,
            text(row, 8)?,
        ];
        let status = text(row, 9)?;
        let contact_version: i64 = row.get(10)?;
        let created_at: i64 = row.get(11)?;
        let updated_at: i64 = row.get(12)?;
        let items_wire = match row.get_ref(13)? {
            ValueRef::Blob(wire) => Some(wire),
            _ => None,
        };
        let at = |ms: i64, what: &str| {
            DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(order_id, what))
        };
        Ok((|| {
            Ok(StoredOrder {
                order_id,
                user_id,
                items_json: items,
                items_wire,
                emails: serde_json::from_str(emails).map_err(|_| corrupt(order_id, "emails"))?,
                address,
                status: OrderStatus::from_str_opt(status)
                    .ok_or_else(|| corrupt(order_id, "status"))?,
                contact_version,
                created_at: at(created_at, "created_at")?,
                updated_at: at(updated_at, "updated_at")?,
            })
        })())
    }

    /// The items, parsed from the JSON column.
    fn items(&self) -> Result<Vec<StoredItem<'r>>, StoreError> {
        serde_json::from_str(self.items_json).map_err(|_| corrupt(self.order_id, "items"))
    }

    /// The items as the `items` fields of the order's message: the `items_wire` column
    /// as it is, or for a row written before it, written from the JSON column.
    fn listed_items(&self) -> Result<Cow<'r, [u8]>, StoreError> {
        if let Some(wire) = self.items_wire {
            return Ok(Cow::Borrowed(wire));
        }
        let mut wire = Vec::new();
        for item in self.items()? {
            crate::wire::item(&mut wire, &item.item_id, item.quantity, &item.price);
        }
        Ok(Cow::Owned(wire))
    }

    fn into_order(self) -> Result<Order, StoreError> {
        let order_id = self.order_id;
        let items = self
            .items()?
            .into_iter()
            .map(|i| {
                Ok(OrderItem {
                    price: Price::parse(&i.price).map_err(|_| corrupt(order_id, "price"))?,
                    item_id: i.item_id.into_owned(),
                    quantity: i.quantity,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let [street, city, province, postal_code, country] = self.address.map(str::to_owned);
        Ok(Order {
            order_id: OrderId::parse(order_id).map_err(|_| corrupt(order_id, "order_id"))?,
            user_id: UserId::parse(self.user_id).map_err(|_| corrupt(order_id, "user_id"))?,
            items,
            emails: EmailList::from_stored(
                self.emails.0.into_iter().map(Cow::into_owned).collect(),
            ),
            delivery_address: Address::from_stored(street, city, province, postal_code, country),
            status: self.status,
            contact_version: self.contact_version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }

    /// The message, the ids and prices copied as written: they were stored in their
    /// canonical form (`OrderId`'s and `Price`'s `Display`), so parsing them to print
    /// them again, as `into_order` then `Order::into_proto` do, gives back the same text
    /// at a cost. The list writes this message's bytes itself ([`Self::encode`]); this
    /// is what its test holds them to.
    #[cfg(test)]
    fn into_proto(self) -> tandem::proto::order::v1::Order {
        use tandem::proto::common::v1 as pb_common;
        use tandem::proto::order::v1 as pb;
        use tandem::proto::timestamp;
        pb::Order {
            order_id: self.order_id.to_owned(),
            user_id: self.user_id.to_owned(),
            items: self
                .items()
                .unwrap()
                .into_iter()
                .map(|i| pb::OrderItem {
                    item_id: i.item_id.into_owned(),
                    quantity: i.quantity,
                    price: Some(pb_common::Decimal {
                        value: i.price.into_owned(),
                    }),
                })
                .collect(),
            emails: self.emails.0.into_iter().map(Cow::into_owned).collect(),
            delivery_address: Some({
                let [street, city, province, postal_code, country] =
                    self.address.map(str::to_owned);
                pb_common::Address {
                    street,
                    city,
                    province,
                    postal_code,
                    country,
                }
            }),
            order_status: self.status.to_proto() as i32,
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
            contact_version: self.contact_version,
        }
    }
}

impl StoredOrder<'_> {
    /// The `orders` field of a `ListOrdersResponse` holding this order: the bytes prost
    /// writes for [`Self::into_proto`]'s message, written from the row's text in place
    /// (bench/FINDINGS.md §18; `listed_orders_are_the_bytes_prost_writes`).
    /// `items` are its [`Self::listed_items`].
    fn encode(&self, items: &[u8], page: &mut Vec<u8>) {
        use crate::wire::{field, int, message, repeated_string, string, timestamp};
        // An order's message is over 127 bytes (its two ids alone are 76) and, short of
        // thousands of items, under 16 KiB: a length of two bytes.
        message(page, crate::wire::ORDERS, 2, |page| {
            string(page, field::ORDER_ID, self.order_id);
            string(page, field::USER_ID, self.user_id);
            page.extend_from_slice(items);
            for email in &self.emails.0 {
                repeated_string(page, field::EMAILS, email);
            }
            message(page, field::DELIVERY_ADDRESS, 1, |page| {
                for (tag, part) in field::ADDRESS.into_iter().zip(self.address) {
                    string(page, tag, part);
                }
            });
            int(page, field::ORDER_STATUS, self.status.to_proto() as i64);
            timestamp(page, field::CREATED_AT, self.created_at);
            timestamp(page, field::UPDATED_AT, self.updated_at);
            int(page, field::CONTACT_VERSION, self.contact_version);
        });
    }
}

fn order_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Order, StoreError>> {
    Ok(StoredOrder::read(row)?.and_then(StoredOrder::into_order))
}

fn load_order(conn: &Connection, order_id: &str) -> Result<Option<Order>, StoreError> {
    conn.prepare_cached(LOAD_ORDER)?
        .query_row([order_id], order_from_row)
        .optional()?
        .transpose()
}

/// Hands `each` the rows of up to `limit` orders matching `filter` after `after`, oldest
/// first.
fn query_orders(
    conn: &Connection,
    filter: ListFilter,
    after: Option<PageCursor>,
    limit: usize,
    mut each: impl FnMut(&Row<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut conditions = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(status) = filter.status {
        conditions.push("order_status = ?");
        values.push(status.as_str().to_owned().into());
    }
    if let Some(user_id) = filter.user_id {
        conditions.push("user_id = ?");
        values.push(user_id.to_string().into());
    }
    if let Some(cursor) = after {
        conditions.push("(created_at, order_id) > (?, ?)");
        values.push(millis(cursor.created_at).into());
        values.push(cursor.order_id.to_string().into());
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    values.push((limit as i64).into());
    let sql = format!(
        "SELECT {STORED_COLUMNS} FROM orders {filter} ORDER BY created_at, order_id LIMIT ?"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params_from_iter(values))?;
    while let Some(row) = rows.next()? {
        each(row)?;
    }
    Ok(())
}

/// Copies `contact` onto the user's orders whose applied version is lower, inside the
/// caller's write transaction.
fn apply_contact(
    tx: &Connection,
    contact: &UserContact,
    now: DateTime<Utc>,
) -> Result<ApplyOutcome, StoreError> {
    let user_id = contact.user_id.to_string();
    let a = &contact.delivery_address;
    let matched: i64 = tx
        .prepare_cached("SELECT count(*) FROM orders WHERE user_id = ?1")?
        .query_row([&user_id], |row| row.get(0))?;
    // The address of an order past 'under process' is history: keep it.
    let modified = tx
        .prepare_cached(
            "UPDATE orders SET emails = ?3, contact_version = ?2, updated_at = ?9, \
               street      = CASE order_status WHEN 'under process' THEN ?4 ELSE street END, \
               city        = CASE order_status WHEN 'under process' THEN ?5 ELSE city END, \
               province    = CASE order_status WHEN 'under process' THEN ?6 ELSE province END, \
               postal_code = CASE order_status WHEN 'under process' THEN ?7 ELSE postal_code END, \
               country     = CASE order_status WHEN 'under process' THEN ?8 ELSE country END \
             WHERE user_id = ?1 AND contact_version < ?2",
        )?
        .execute(params![
            user_id,
            contact.version,
            json_list(contact.emails.to_strings()),
            a.street(),
            a.city(),
            a.province(),
            a.postal_code(),
            a.country(),
            millis(now),
        ])?;
    Ok(ApplyOutcome {
        matched: matched.max(0) as u64,
        modified: modified as u64,
    })
}

#[async_trait]
impl OrderStore for SqliteOrderStore {
    async fn create_order(&self, order: &Order) -> Result<(), StoreError> {
        let order = order.clone();
        self.db
            .write(move |conn| {
                conn.prepare_cached(INSERT_ORDER)?
                    .execute(params_from_iter(order_params(&order)))?;
                Ok(())
            })
            .await
    }

    async fn get_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        self.db
            .read(move |conn| load_order(conn, &order_id.to_string()))
            .await
    }

    async fn list_orders(
        &self,
        filter: ListFilter,
        after: Option<PageCursor>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        self.db
            .read(move |conn| {
                let mut orders = Vec::with_capacity(limit);
                query_orders(conn, filter, after, limit, |row| {
                    orders.push(order_from_row(row)??);
                    Ok(())
                })?;
                Ok(orders)
            })
            .await
    }

    async fn list_page(
        &self,
        filter: ListFilter,
        after: Option<PageCursor>,
        page_size: usize,
    ) -> Result<Page, StoreError> {
        self.db
            .read(move |conn| {
                let mut page = PageEncoder::new(page_size);
                query_orders(conn, filter, after, page_size + 1, |row| {
                    let order = StoredOrder::read(row)??;
                    let items = order.listed_items()?;
                    page.push_with(order.order_id, Some(order.created_at), |page| {
                        order.encode(&items, page)
                    });
                    Ok(())
                })?;
                page.finish()
            })
            .await
    }

    async fn update_status(
        &self,
        order_id: OrderId,
        status: OrderStatus,
        now: DateTime<Utc>,
    ) -> Result<StatusOutcome, StoreError> {
        self.db
            .write(move |tx| {
                let id = order_id.to_string();
                let earlier: Vec<Value> = statuses_before(status)
                    .into_iter()
                    .map(|s| Value::from(s.as_str().to_owned()))
                    .collect();
                let moved = if earlier.is_empty() {
                    0
                } else {
                    let placeholders = vec!["?"; earlier.len()].join(", ");
                    let mut values = vec![
                        Value::from(status.as_str().to_owned()),
                        millis(now).into(),
                        id.clone().into(),
                    ];
                    values.extend(earlier);
                    tx.execute(
                        &format!(
                            "UPDATE orders SET order_status = ?, updated_at = ? \
                         WHERE order_id = ? AND order_status IN ({placeholders})"
                        ),
                        params_from_iter(values),
                    )?
                };
                let current = load_order(tx, &id)?;
                Ok(match current {
                    None => StatusOutcome::NotFound,
                    Some(order) if moved == 1 => StatusOutcome::Moved(order),
                    Some(order) => status_outcome(order, status),
                })
            })
            .await
    }

    async fn update_details(
        &self,
        order_id: OrderId,
        change: &ContactChange,
        now: DateTime<Utc>,
    ) -> Result<DetailsOutcome, StoreError> {
        let change = change.clone();
        self.db
            .write(move |tx| {
                let id = order_id.to_string();
                // The write transaction holds the lock: the status read below stays true
                // until the write commits.
                let Some(mut order) = load_order(tx, &id)? else {
                    return Ok(DetailsOutcome::NotFound);
                };
                if let Some(address) = &change.delivery_address {
                    if *address != order.delivery_address && order.status.address_is_history() {
                        return Ok(DetailsOutcome::AddressIsHistory(order.status));
                    }
                    order.delivery_address = address.clone();
                }
                if let Some(emails) = &change.emails {
                    order.emails = emails.clone();
                }
                order.updated_at = now;
                let a = &order.delivery_address;
                tx.execute(
                    "UPDATE orders SET emails = ?2, street = ?3, city = ?4, province = ?5, \
                 postal_code = ?6, country = ?7, updated_at = ?8 WHERE order_id = ?1",
                    params![
                        id,
                        json_list(order.emails.to_strings()),
                        a.street(),
                        a.city(),
                        a.province(),
                        a.postal_code(),
                        a.country(),
                        millis(now),
                    ],
                )?;
                Ok(DetailsOutcome::Updated(order))
            })
            .await
    }

    async fn apply_user_contact(
        &self,
        contact: &UserContact,
        now: DateTime<Utc>,
    ) -> Result<ApplyOutcome, StoreError> {
        let contact = contact.clone();
        self.db
            .write(move |tx| apply_contact(tx, &contact, now))
            .await
    }

    async fn apply_user_contacts(
        &self,
        contacts: Vec<UserContact>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        self.db
            .write(move |tx| {
                contacts
                    .iter()
                    .map(|contact| apply_contact(tx, contact, now))
                    .collect()
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .read(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))?;
                Ok(())
            })
            .await
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.db.register_metrics(registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a new file, and the directory that holds it (removed when dropped).
    async fn fresh_store() -> (tempfile::TempDir, SqliteOrderStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteOrderStore::open(&dir.path().join("order_db.sqlite"))
            .await
            .unwrap();
        (dir, store)
    }

    /// Items are written as arrays; rows of the earlier map form still load, and both
    /// forms are read by the same struct (so a binary of before reads the new rows).
    #[tokio::test]
    async fn items_are_stored_as_arrays_and_the_earlier_map_form_still_loads() {
        let (_dir, store) = fresh_store().await;
        let items = vec![
            OrderItem {
                item_id: "book \"one\"".into(),
                quantity: 2,
                price: Price::parse("29.90").unwrap(),
            },
            OrderItem {
                item_id: "mug".into(),
                quantity: 1,
                price: Price::parse("0.5").unwrap(),
            },
        ];
        let written = items_json(&items);
        assert_eq!(written, r#"[["book \"one\"",2,"29.90"],["mug",1,"0.5"]]"#);
        let map_form = r#"[{"itemId":"book \"one\"","quantity":2,"price":"29.90"},{"itemId":"mug","quantity":1,"price":"0.5"}]"#;
        for (i, column) in [written.as_str(), map_form].into_iter().enumerate() {
            let order_id = OrderId::new_random();
            let column = column.to_owned();
            store
                .db
                .write(move |tx| {
                    tx.execute(
                        &format!("INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?1, ?2, ?3, '[\"a@b.co\"]', 's', 'c', 'p', 'z', 'C', 'shipping', 3, 10, 20)"),
                        params![order_id.to_string(), "6e3e7c1a-3c77-4c2e-9d3e-2f9a4e6d1b20", column],
                    )?;
                    Ok::<_, SqliteError>(())
                })
                .await
                .unwrap();
            let order = store.get_order(order_id).await.unwrap().unwrap();
            assert_eq!(order.items, items, "form {i}");
            let filter = ListFilter {
                status: Some(OrderStatus::Shipping),
                user_id: None,
            };
            let listed = store.list_page(filter, None, 10).await.unwrap();
            let id = order.order_id.to_string();
            let listed = listed
                .decode_orders()
                .unwrap()
                .into_iter()
                .find(|o| o.order_id == id);
            assert_eq!(listed, Some(order.into_proto()), "form {i}");
        }
        let both: Vec<StoredItem> = serde_json::from_str(map_form).unwrap();
        assert_eq!(both[1].price, "0.5");
    }

    /// The list's orders, written from the row in place, are the bytes prost writes for
    /// the message built from the same row: fields left out at their defaults, empty
    /// lists and strings, negative numbers, lengths of one, two and three bytes.
    #[tokio::test]
    async fn listed_orders_are_the_bytes_prost_writes() {
        let (_dir, store) = fresh_store().await;
        let long = "x".repeat(200);
        let very_long = "é".repeat(10_000);
        let rows: Vec<[String; 4]> = vec![
            [
                r#"[["book \"one\"",2,"29.90"],["mug",1,"0.5"]]"#.into(),
                // The second escaped in the column: read into a string of its own.
                r#"["a@b.co","sec\u00f6nd@x.co"]"#.into(),
                "'s', 'c', 'p', 'z', 'C', 'delivered', 3, 1764000000123, 1764000000456".into(),
                "plain".into(),
            ],
            [
                "[]".into(),
                "[]".into(),
                "'', '', '', '', '', 'under process', 0, 0, 0".into(),
                "empty".into(),
            ],
            [
                format!(
                    r#"[["{long}",9000000000,"123456789012345678.123456789"],["",-1,""],["{very_long}",0,"0"]]"#
                ),
                r#"["","zoë@example.com"]"#.into(),
                "'Straße 5 – 😀', '', 'QC', '', 'CA', 'shipping', -5, -1, -62135596800000".into(),
                "long".into(),
            ],
        ];
        for [items, emails, rest, what] in rows {
            let order_id = OrderId::new_random().to_string();
            let sql = format!(
                "INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?1, 'u-{what}', ?2, ?3, {rest})"
            );
            let id = order_id.clone();
            store
                .db
                .write(move |tx| {
                    tx.execute(&sql, params![id, items, emails])?;
                    Ok::<_, SqliteError>(())
                })
                .await
                .unwrap();
            let (written, expected) = store
                .db
                .read(move |conn| {
                    Ok::<_, SqliteError>(conn.query_row(LOAD_ORDER, [&order_id], |row| {
                        let order = StoredOrder::read(row)?.unwrap();
                        let mut written = Vec::new();
                        order.encode(&order.listed_items().unwrap(), &mut written);
                        let mut expected = Vec::new();
                        let message = order.into_proto();
                        prost::encoding::message::encode(
                            crate::wire::ORDERS,
                            &message,
                            &mut expected,
                        );
                        Ok((written, expected))
                    })?)
                })
                .await
                .unwrap();
            assert_eq!(written, expected, "{what}");
        }
    }

    /// An order written now lists its items from `items_wire`, copied as written: the
    /// page is what prost writes for the order, and the same as the page of a row
    /// written before the column (items parsed from JSON).
    #[tokio::test]
    async fn new_orders_list_their_items_from_items_wire_as_old_rows_from_json() {
        let (_dir, store) = fresh_store().await;
        let item = |item_id: String, quantity, price| OrderItem {
            item_id,
            quantity,
            price: Price::parse(price).unwrap(),
        };
        let at = |ms| DateTime::from_timestamp_millis(ms).unwrap();
        let order = Order {
            order_id: OrderId::new_random(),
            user_id: UserId::new_random(),
            items: vec![
                item("book \"one\" – ü".into(), 2, "29.90"),
                item(
                    "x".repeat(300),
                    9_000_000_000,
                    "123456789012345678.123456789",
                ),
                item("mug".into(), 1, "0.5"),
            ],
            emails: EmailList::from_stored(vec!["a@b.co".into()]),
            delivery_address: Address::from_stored(
                "Straße 5".into(),
                "c".into(),
                "QC".into(),
                "z".into(),
                "CA".into(),
            ),
            status: OrderStatus::Delivered,
            contact_version: 3,
            created_at: at(1_764_000_000_123),
            updated_at: at(1_764_000_000_456),
        };
        store.create_order(&order).await.unwrap();
        // The same order as a row of before: no items_wire.
        let mut old = order.clone();
        old.order_id = OrderId::new_random();
        old.created_at = at(1_764_000_000_124);
        let (id, items) = (old.order_id.to_string(), items_json(&old.items));
        let (user, rest) = (
            old.user_id.to_string(),
            "'[\"a@b.co\"]', 'Straße 5', 'c', 'QC', 'z', 'CA', 'delivered', 3, 1764000000124, 1764000000456",
        );
        store
            .db
            .write(move |tx| {
                tx.execute(
                    &format!("INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?1, ?2, ?3, {rest})"),
                    params![id, user, items],
                )?;
                Ok::<_, SqliteError>(())
            })
            .await
            .unwrap();
        let wire: Vec<Option<Vec<u8>>> = store
            .db
            .read(|conn| {
                let mut rows = conn.prepare("SELECT items_wire FROM orders ORDER BY created_at")?;
                let wire = rows
                    .query_map([], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok::<_, SqliteError>(wire)
            })
            .await
            .unwrap();
        assert!(wire[0].is_some(), "written with its items_wire");
        assert_eq!(wire[1], None, "the row of before");
        let filter = ListFilter {
            status: Some(OrderStatus::Delivered),
            user_id: None,
        };
        let page = store.list_page(filter, None, 10).await.unwrap();
        let listed = page.decode_orders().unwrap();
        let mut old_listed = listed[1].clone();
        assert_eq!(old_listed.order_id, old.order_id.to_string());
        assert_eq!(listed[0], order.clone().into_proto());
        old_listed.order_id = order.order_id.to_string();
        old_listed.created_at = listed[0].created_at;
        assert_eq!(old_listed, listed[0]);
        let mut expected = Vec::new();
        for o in [order.into_proto(), old.into_proto()] {
            prost::encoding::message::encode(crate::wire::ORDERS, &o, &mut expected);
        }
        let written = crate::wire::EncodedListOrdersResponse::new(page, String::new());
        assert_eq!(prost::Message::encode_to_vec(&written), expected);
    }

    #[tokio::test]
    async fn orders_survive_the_move_to_the_clustered_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order_db.sqlite");
        let v1 = sqlite::open(&path, &MIGRATIONS[..1]).await.unwrap();
        v1.write(|tx| {
            tx.execute(
                &format!("INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?1, ?2, '[{{\"itemId\":\"t\",\"quantity\":2,\"price\":\"29.99\"}}]', '[\"a@b.co\"]', 's', 'c', 'p', 'z', 'C', 'shipping', 3, 10, 20)"),
                ["8eab397f-6890-4c61-b3f8-4f6c099e4c90", "6e3e7c1a-3c77-4c2e-9d3e-2f9a4e6d1b20"],
            )?;
            Ok::<_, SqliteError>(())
        })
        .await
        .unwrap();
        drop(v1);
        let store = SqliteOrderStore::open(&path).await.unwrap();
        let id = OrderId::parse("8eab397f-6890-4c61-b3f8-4f6c099e4c90").unwrap();
        let order = store.get_order(id).await.unwrap().expect("the order moved");
        assert_eq!(
            (order.status, order.contact_version),
            (OrderStatus::Shipping, 3)
        );
        assert_eq!(order.items[0].price.to_string(), "29.99");
        let plan: String = store
            .db
            .read(|conn| {
                Ok::<_, SqliteError>(conn.query_row(
                    "EXPLAIN QUERY PLAN UPDATE orders SET emails = '[]' WHERE user_id = 'x' AND contact_version < 5",
                    [],
                    |row| row.get(3),
                )?)
            })
            .await
            .unwrap();
        assert!(plan.contains("PRIMARY KEY (user_id=?)"), "{plan}");
    }
}
