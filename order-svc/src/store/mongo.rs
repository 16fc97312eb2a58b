//! Orders in MongoDB (`order_db.orders`). Prices are Decimal128, never doubles.

use async_trait::async_trait;
use bson::{Bson, Decimal128, Document, doc};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use tandem::domain::{ContactChange, EmailList, OrderId, OrderStatus, Price, UserContact, UserId};
use tandem_storage::mongo::{
    self, Failure, address_doc, address_from_doc, address_schema, bson_date, emails_schema,
    ensure_collection, from_bson_date, integer,
};

use super::{
    ApplyOutcome, DetailsOutcome, OrderStore, StatusOutcome, StoreError, status_outcome,
    statuses_before,
};
use crate::model::{ListFilter, Order, OrderItem, PageCursor};

pub struct MongoOrderStore {
    db: Database,
    orders: Collection<Document>,
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
        match mongo::classify(&e) {
            Failure::Unavailable(m) => StoreError::Unavailable(m),
            Failure::DuplicateKey | Failure::Internal(_) => StoreError::Internal(e.to_string()),
        }
    }
}

fn orders_validator() -> Document {
    doc! { "$jsonSchema": {
        "bsonType": "object",
        "required": ["orderId", "userId", "items", "emails", "deliveryAddress", "orderStatus",
                     "contactVersion", "createdAt", "updatedAt"],
        "properties": {
            "orderId": { "bsonType": "string" },
            "userId": { "bsonType": "string" },
            "items": {
                "bsonType": "array",
                "minItems": 1,
                "items": {
                    "bsonType": "object",
                    "required": ["itemId", "quantity", "price"],
                    "properties": {
                        "itemId": { "bsonType": "string" },
                        "quantity": { "bsonType": "long", "minimum": 1 },
                        "price": { "bsonType": "decimal" },
                    },
                },
            },
            "emails": emails_schema(),
            "deliveryAddress": address_schema(),
            "orderStatus": { "enum": ["under process", "shipping", "delivered"] },
            "contactVersion": { "bsonType": "long", "minimum": 0 },
            "createdAt": { "bsonType": "date" },
            "updatedAt": { "bsonType": "date" },
        },
    }}
}

impl MongoOrderStore {
    pub async fn connect(uri: &str) -> Result<Self, StoreError> {
        let (_client, db) = mongo::connect(uri, "tandem-order-svc", "order_db")
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot reach MongoDB: {e}")))?;
        ensure_collection(&db, "orders", orders_validator()).await?;
        let orders = db.collection::<Document>("orders");
        let index = |keys: Document, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(unique).build())
                .build()
        };
        orders
            .create_indexes([
                index(doc! { "orderId": 1 }, true),
                index(doc! { "orderStatus": 1, "createdAt": 1 }, false),
                // ApplyUserContact touches one user's orders through this index.
                index(doc! { "userId": 1 }, false),
                // Unfiltered listing walks orders in page order.
                index(doc! { "createdAt": 1, "orderId": 1 }, false),
            ])
            .await?;
        Ok(Self { db, orders })
    }
}

fn decimal128(price: &Price) -> Decimal128 {
    // rust_decimal prints plain notation with at most 28 fractional digits, always within
    // Decimal128's 34 significant digits.
    price
        .to_string()
        .parse()
        .expect("a Price always fits in Decimal128")
}

fn order_doc(order: &Order) -> Document {
    let items: Vec<Document> = order
        .items
        .iter()
        .map(|i| {
            doc! {
                "itemId": &i.item_id,
                "quantity": i.quantity,
                "price": decimal128(&i.price),
            }
        })
        .collect();
    doc! {
        "orderId": order.order_id.to_string(),
        "userId": order.user_id.to_string(),
        "items": items,
        "emails": order.emails.to_strings(),
        "deliveryAddress": address_doc(&order.delivery_address),
        "orderStatus": order.status.as_str(),
        "contactVersion": order.contact_version,
        "createdAt": bson_date(order.created_at),
        "updatedAt": bson_date(order.updated_at),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("stored order is malformed ({what}): {e}"))
}

fn order_from_doc(d: &Document) -> Result<Order, StoreError> {
    let text = |doc: &Document, key: &str| {
        doc.get_str(key)
            .map(str::to_owned)
            .map_err(|e| corrupt(key, e))
    };
    let date = |key: &str| {
        d.get_datetime(key)
            .ok()
            .copied()
            .and_then(from_bson_date)
            .ok_or_else(|| corrupt(key, "not a date"))
    };
    let items = d
        .get_array("items")
        .map_err(|e| corrupt("items", e))?
        .iter()
        .map(|item| {
            let item = item
                .as_document()
                .ok_or_else(|| corrupt("items", "not a document"))?;
            let price = match item.get("price") {
                Some(Bson::Decimal128(p)) => {
                    Price::parse(&p.to_string()).map_err(|e| corrupt("price", e))?
                }
                other => return Err(corrupt("price", format!("{other:?}"))),
            };
            Ok(OrderItem {
                item_id: text(item, "itemId")?,
                quantity: integer(item.get("quantity"))
                    .ok_or_else(|| corrupt("quantity", "not an integer"))?,
                price,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let emails = d
        .get_array("emails")
        .map_err(|e| corrupt("emails", e))?
        .iter()
        .map(|e| {
            e.as_str()
                .map(str::to_owned)
                .ok_or_else(|| corrupt("emails", "not a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let address = d
        .get_document("deliveryAddress")
        .map_err(|e| corrupt("deliveryAddress", e))
        .and_then(|a| address_from_doc(a).map_err(|e| corrupt("deliveryAddress", e)))?;
    Ok(Order {
        order_id: OrderId::parse(&text(d, "orderId")?).map_err(|e| corrupt("orderId", e))?,
        user_id: UserId::parse(&text(d, "userId")?).map_err(|e| corrupt("userId", e))?,
        items,
        emails: EmailList::from_stored(emails),
        delivery_address: address,
        status: OrderStatus::from_str_opt(&text(d, "orderStatus")?)
            .ok_or_else(|| corrupt("orderStatus", "unknown"))?,
        contact_version: integer(d.get("contactVersion")).unwrap_or(0),
        created_at: date("createdAt")?,
        updated_at: date("updatedAt")?,
    })
}

fn statuses(list: Vec<OrderStatus>) -> Vec<&'static str> {
    list.into_iter().map(OrderStatus::as_str).collect()
}

#[async_trait]
impl OrderStore for MongoOrderStore {
    async fn create_order(&self, order: &Order) -> Result<(), StoreError> {
        self.orders.insert_one(order_doc(order)).await?;
        Ok(())
    }

    async fn get_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError> {
        self.orders
            .find_one(doc! { "orderId": order_id.to_string() })
            .await?
            .as_ref()
            .map(order_from_doc)
            .transpose()
    }

    async fn list_orders(
        &self,
        filter: ListFilter,
        after: Option<PageCursor>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError> {
        let mut query = Document::new();
        if let Some(status) = filter.status {
            query.insert("orderStatus", status.as_str());
        }
        if let Some(user_id) = filter.user_id {
            query.insert("userId", user_id.to_string());
        }
        if let Some(cursor) = after {
            let at = bson_date(cursor.created_at);
            query.insert(
                "$or",
                vec![
                    doc! { "createdAt": { "$gt": at } },
                    doc! { "createdAt": at, "orderId": { "$gt": cursor.order_id.to_string() } },
                ],
            );
        }
        let docs: Vec<Document> = self
            .orders
            .find(query)
            .sort(doc! { "createdAt": 1, "orderId": 1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        docs.iter().map(order_from_doc).collect()
    }

    async fn update_status(
        &self,
        order_id: OrderId,
        status: OrderStatus,
        now: DateTime<Utc>,
    ) -> Result<StatusOutcome, StoreError> {
        let id = order_id.to_string();
        let moved = self
            .orders
            .find_one_and_update(
                doc! { "orderId": &id, "orderStatus": { "$in": statuses(statuses_before(status)) } },
                doc! { "$set": { "orderStatus": status.as_str(), "updatedAt": bson_date(now) } },
            )
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(order) = moved {
            return Ok(StatusOutcome::Moved(order_from_doc(&order)?));
        }
        Ok(match self.get_order(order_id).await? {
            None => StatusOutcome::NotFound,
            Some(order) => status_outcome(order, status),
        })
    }

    async fn update_details(
        &self,
        order_id: OrderId,
        change: &ContactChange,
        now: DateTime<Utc>,
    ) -> Result<DetailsOutcome, StoreError> {
        let id = order_id.to_string();
        let mut filter = doc! { "orderId": &id };
        let mut set = doc! { "updatedAt": bson_date(now) };
        if let Some(emails) = &change.emails {
            set.insert("emails", emails.to_strings());
        }
        if let Some(address) = &change.delivery_address {
            let address = address_doc(address);
            // Atomic: the address may change only while the order is under process, or
            // be "changed" to what it already is.
            filter.insert(
                "$or",
                vec![
                    doc! { "orderStatus": OrderStatus::UnderProcess.as_str() },
                    doc! { "deliveryAddress": address.clone() },
                ],
            );
            set.insert("deliveryAddress", address);
        }
        let updated = self
            .orders
            .find_one_and_update(filter, doc! { "$set": set })
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(order) = updated {
            return Ok(DetailsOutcome::Updated(order_from_doc(&order)?));
        }
        Ok(match self.get_order(order_id).await? {
            None => DetailsOutcome::NotFound,
            Some(order) => DetailsOutcome::AddressIsHistory(order.status),
        })
    }

    async fn apply_user_contact(
        &self,
        contact: &UserContact,
        now: DateTime<Utc>,
    ) -> Result<ApplyOutcome, StoreError> {
        let user_id = contact.user_id.to_string();
        let matched = self
            .orders
            .count_documents(doc! { "userId": &user_id })
            .await?;
        let older = |status: Document| {
            doc! { "userId": &user_id, "contactVersion": { "$lt": contact.version }, "orderStatus": status }
        };
        let common = doc! {
            "emails": contact.emails.to_strings(),
            "contactVersion": contact.version,
            "updatedAt": bson_date(now),
        };
        let mut with_address = common.clone();
        with_address.insert("deliveryAddress", address_doc(&contact.delivery_address));
        let under_process = self
            .orders
            .update_many(
                older(doc! { "$eq": OrderStatus::UnderProcess.as_str() }),
                doc! { "$set": with_address },
            )
            .await?;
        // The address of an order past 'under process' is history: emails only.
        let shipped = self
            .orders
            .update_many(
                older(doc! { "$ne": OrderStatus::UnderProcess.as_str() }),
                doc! { "$set": common },
            )
            .await?;
        Ok(ApplyOutcome {
            matched,
            modified: under_process.modified_count + shipped.modified_count,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }
}
