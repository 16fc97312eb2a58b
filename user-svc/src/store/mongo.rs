//! Users in MongoDB (`user_db.users`, `user_db.outbox`). A contact change and its outbox
//! record are written in one multi-document transaction, which needs a replica set (a
//! single-node one is enough, as in compose.yaml).

use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bson::{Bson, DateTime as BsonDateTime, Document, doc};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::TryStreamExt;
use mongodb::options::IndexOptions;
use mongodb::{Client, ClientSession, Collection, Database, IndexModel};
use tandem::domain::{ContactChange, EmailList, UserId};
use tandem_storage::mongo::{
    self, Failure, address_doc, address_from_doc, address_schema, bson_date, emails_schema,
    ensure_collection, from_bson_date, integer,
};

use super::{
    ContactUpdated, EventOrigin, OutboxEvent, OutboxLease, OutboxStats, StoreError, UserStore,
    lease_end,
};
use crate::model::User;

pub struct MongoUserStore {
    client: Client,
    db: Database,
    users: Collection<Document>,
    outbox: Collection<Document>,
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
        // A callback inside a transaction may fail with one of our own errors.
        if let Some(own) = e.get_custom::<StoreError>() {
            return own.clone();
        }
        match mongo::classify(&e) {
            // Callers that can say which email was taken handle this themselves.
            Failure::DuplicateKey => StoreError::Internal(format!("unexpected duplicate key: {e}")),
            Failure::Unavailable(m) => StoreError::Unavailable(m),
            Failure::Internal(m) => StoreError::Internal(m),
        }
    }
}

fn users_validator() -> Document {
    doc! { "$jsonSchema": {
        "bsonType": "object",
        "required": ["userId", "emails", "emailsNormalized", "deliveryAddress", "contactVersion"],
        "properties": {
            "userId": { "bsonType": "string" },
            "firstName": { "bsonType": "string" },
            "lastName": { "bsonType": "string" },
            "phoneNumber": { "bsonType": "string" },
            "emails": emails_schema(),
            "emailsNormalized": emails_schema(),
            "deliveryAddress": address_schema(),
            "contactVersion": { "bsonType": "long", "minimum": 1 },
            "createdAt": { "bsonType": "date" },
            "updatedAt": { "bsonType": "date" },
        },
    }}
}

fn outbox_validator() -> Document {
    doc! { "$jsonSchema": {
        "bsonType": "object",
        "required": ["_id", "userId", "version", "payload", "createdAt", "leaseUntil", "attempts"],
        "properties": {
            "_id": { "bsonType": "string" },
            "userId": { "bsonType": "string" },
            "version": { "bsonType": "long" },
            "payload": { "bsonType": "string" },
            "createdAt": { "bsonType": "date" },
            "leaseUntil": { "bsonType": "date" },
            "attempts": { "bsonType": "long" },
        },
    }}
}

impl MongoUserStore {
    pub async fn connect(uri: &str) -> Result<Self, StoreError> {
        let (client, db) = mongo::connect(uri, "tandem-user-svc", "user_db")
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot reach MongoDB: {e}")))?;
        ensure_collection(&db, "users", users_validator()).await?;
        ensure_collection(&db, "outbox", outbox_validator()).await?;
        let users = db.collection::<Document>("users");
        let outbox = db.collection::<Document>("outbox");
        let unique = || IndexOptions::builder().unique(true).build();
        users
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "userId": 1 })
                    .options(unique())
                    .build(),
                // Multikey and unique: no address (lowercased) can belong to two users.
                IndexModel::builder()
                    .keys(doc! { "emailsNormalized": 1 })
                    .options(unique())
                    .build(),
            ])
            .await?;
        // Event ids are UUIDv7, so `_id` order is creation order.
        outbox
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "leaseUntil": 1, "_id": 1 })
                    .build(),
            )
            .await?;
        Ok(Self {
            client,
            db,
            users,
            outbox,
        })
    }

    /// Which of `emails` another user already has (after a duplicate key refusal).
    async fn taken_email(&self, emails: &EmailList, user_id: &str) -> StoreError {
        let normalized = emails.normalized();
        let holder = self
            .users
            .find_one(
                doc! { "emailsNormalized": { "$in": &normalized }, "userId": { "$ne": user_id } },
            )
            .await;
        let taken: Vec<String> = match holder {
            Ok(Some(doc)) => doc
                .get_array("emailsNormalized")
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let email = emails
            .as_slice()
            .iter()
            .find(|e| taken.contains(&e.normalized()))
            .or(emails.as_slice().first())
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default();
        StoreError::EmailTaken { email }
    }
}

fn user_doc(user: &User) -> Document {
    let mut d = doc! {
        "userId": user.user_id.to_string(),
        "emails": user.emails.to_strings(),
        "emailsNormalized": user.emails.normalized(),
        "deliveryAddress": address_doc(&user.delivery_address),
        "contactVersion": user.contact_version,
    };
    let optional = [
        (
            "firstName",
            user.first_name.as_ref().map(|s| Bson::from(s.as_str())),
        ),
        (
            "lastName",
            user.last_name.as_ref().map(|s| Bson::from(s.as_str())),
        ),
        (
            "phoneNumber",
            user.phone_number.as_ref().map(|s| Bson::from(s.as_str())),
        ),
        (
            "createdAt",
            user.created_at.map(|t| Bson::DateTime(bson_date(t))),
        ),
        (
            "updatedAt",
            user.updated_at.map(|t| Bson::DateTime(bson_date(t))),
        ),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            d.insert(key, value);
        }
    }
    d
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("stored {what} is malformed: {e}"))
}

fn user_from_doc(d: &Document) -> Result<User, StoreError> {
    let text = |key: &str| {
        d.get_str(key)
            .map(str::to_owned)
            .map_err(|e| corrupt("user", e))
    };
    let optional = |key: &str| d.get_str(key).ok().map(str::to_owned);
    let date = |key: &str| d.get_datetime(key).ok().copied().and_then(from_bson_date);
    let address = d
        .get_document("deliveryAddress")
        .map_err(|e| corrupt("user", e))
        .and_then(|a| address_from_doc(a).map_err(|e| corrupt("user", e)))?;
    let emails = d
        .get_array("emails")
        .map_err(|e| corrupt("user", e))?
        .iter()
        .map(|e| {
            e.as_str()
                .map(str::to_owned)
                .ok_or_else(|| corrupt("emails", "not a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(User {
        user_id: UserId::parse(&text("userId")?).map_err(|e| corrupt("userId", e))?,
        first_name: optional("firstName"),
        last_name: optional("lastName"),
        phone_number: optional("phoneNumber"),
        emails: EmailList::from_stored(emails),
        delivery_address: address,
        contact_version: integer(d.get("contactVersion"))
            .ok_or_else(|| corrupt("user", "contactVersion is not an integer"))?,
        created_at: date("createdAt"),
        updated_at: date("updatedAt"),
    })
}

/// The outbox document of `e`, leased to `leased_to` when given.
fn outbox_doc(e: &OutboxEvent, leased_to: Option<&OutboxLease>) -> Document {
    let mut d = doc! {
        "_id": &e.event_id,
        "userId": &e.user_id,
        "version": e.version,
        "payload": &e.payload,
        "createdAt": bson_date(e.created_at),
        "leaseUntil": BsonDateTime::from_millis(0),
        "attempts": e.attempts,
    };
    if let Some(to) = leased_to {
        d.insert("leaseOwner", &to.owner);
        d.insert("leaseUntil", bson_date(lease_end(e.created_at, to.lease)));
    }
    for (key, value) in [
        ("requestId", &e.origin.request_id),
        ("traceparent", &e.origin.traceparent),
        ("tracestate", &e.origin.tracestate),
    ] {
        if let Some(value) = value {
            d.insert(key, value);
        }
    }
    d
}

fn outbox_from_doc(d: &Document) -> Result<OutboxEvent, StoreError> {
    let text = |key: &str| {
        d.get_str(key)
            .map(str::to_owned)
            .map_err(|e| corrupt("outbox event", e))
    };
    Ok(OutboxEvent {
        event_id: text("_id")?,
        user_id: text("userId")?,
        version: integer(d.get("version"))
            .ok_or_else(|| corrupt("outbox event", "version is not an integer"))?,
        payload: text("payload")?,
        origin: EventOrigin {
            request_id: d.get_str("requestId").ok().map(str::to_owned),
            traceparent: d.get_str("traceparent").ok().map(str::to_owned),
            tracestate: d.get_str("tracestate").ok().map(str::to_owned),
        },
        created_at: d
            .get_datetime("createdAt")
            .ok()
            .copied()
            .and_then(from_bson_date)
            .unwrap_or_default(),
        attempts: integer(d.get("attempts")).unwrap_or(0),
    })
}

/// What the contact-change transaction needs; owned, because the driver may run the
/// transaction body more than once (on transient errors).
struct TxContext {
    users: Collection<Document>,
    outbox: Collection<Document>,
    user_id: UserId,
    change: ContactChange,
    stamp: Option<DateTime<Utc>>,
    origin: EventOrigin,
    leased_to: Option<OutboxLease>,
}

async fn write_contact_change(
    session: &mut ClientSession,
    context: &mut TxContext,
) -> mongodb::error::Result<ContactUpdated> {
    let TxContext {
        users,
        outbox,
        user_id,
        change,
        stamp,
        origin,
        leased_to,
    } = context;
    let id = user_id.to_string();
    let current = users
        .find_one(doc! { "userId": &id })
        .session(&mut *session)
        .await?
        .ok_or_else(|| mongodb::error::Error::custom(StoreError::NotFound))?;
    let current = user_from_doc(&current).map_err(mongodb::error::Error::custom)?;
    let user = current.changed(change, *stamp);
    let mut set = doc! {
        "emails": user.emails.to_strings(),
        "emailsNormalized": user.emails.normalized(),
        "deliveryAddress": address_doc(&user.delivery_address),
        "contactVersion": user.contact_version,
    };
    if let Some(at) = user.updated_at {
        set.insert("updatedAt", bson_date(at));
    }
    // The version in the filter makes a concurrent change fail this one rather than both
    // writing the same version.
    let updated = users
        .update_one(
            doc! { "userId": &id, "contactVersion": user.contact_version - 1 },
            doc! { "$set": set },
        )
        .session(&mut *session)
        .await?;
    if updated.matched_count != 1 {
        return Err(mongodb::error::Error::custom(StoreError::Unavailable(
            "the user changed concurrently; try again".into(),
        )));
    }
    let mut event = OutboxEvent::for_user(&user, tandem::domain::now(), origin.clone());
    if leased_to.is_some() {
        event.attempts = 1;
    }
    outbox
        .insert_one(outbox_doc(&event, leased_to.as_ref()))
        .session(&mut *session)
        .await?;
    Ok(ContactUpdated { user, event })
}

#[async_trait]
impl UserStore for MongoUserStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        match self.users.insert_one(user_doc(user)).await {
            Ok(_) => Ok(()),
            Err(e) if mongo::classify(&e) == Failure::DuplicateKey => Err(self
                .taken_email(&user.emails, &user.user_id.to_string())
                .await),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_user(&self, user_id: UserId) -> Result<Option<User>, StoreError> {
        self.users
            .find_one(doc! { "userId": user_id.to_string() })
            .await?
            .as_ref()
            .map(user_from_doc)
            .transpose()
    }

    async fn update_contact(
        &self,
        user_id: UserId,
        change: &ContactChange,
        stamp: Option<DateTime<Utc>>,
        origin: EventOrigin,
        leased_to: Option<&OutboxLease>,
    ) -> Result<ContactUpdated, StoreError> {
        let run_transaction = || async {
            let mut session = self.client.start_session().await?;
            let context = TxContext {
                users: self.users.clone(),
                outbox: self.outbox.clone(),
                user_id,
                change: change.clone(),
                stamp,
                origin: origin.clone(),
                leased_to: leased_to.cloned(),
            };
            session
                .start_transaction()
                .and_run(context, |session, context| {
                    write_contact_change(session, context).boxed()
                })
                .await
        };
        // Two changes of one user at once: one transaction loses and runs again.
        let result = run_transaction
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(5))
                    .with_max_delay(Duration::from_millis(200))
                    .with_max_times(8)
                    .with_jitter(),
            )
            .when(mongo::is_write_conflict)
            .await;
        match result {
            Ok(updated) => Ok(updated),
            Err(e) if mongo::classify(&e) == Failure::DuplicateKey => {
                let emails = change
                    .emails
                    .clone()
                    .unwrap_or_else(|| EmailList::from_stored(vec![]));
                Err(self.taken_email(&emails, &user_id.to_string()).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let now = tandem::domain::now();
        let due: Vec<Document> = self
            .outbox
            .find(doc! { "leaseUntil": { "$lte": bson_date(now) } })
            .sort(doc! { "_id": 1 })
            .limit(limit as i64)
            .projection(doc! { "_id": 1, "attempts": 1 })
            .await?
            .try_collect()
            .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for candidate in due {
            let (Ok(id), Some(attempts)) =
                (candidate.get_str("_id"), integer(candidate.get("attempts")))
            else {
                continue;
            };
            // One conditional update per event: if another relay claimed it since the
            // read above, the filter (lease and attempt count) no longer matches and this
            // relay skips it. `$set` rather than `$inc` keeps the count an Int64 on every
            // server.
            let won = self
                .outbox
                .find_one_and_update(
                    doc! { "_id": id, "attempts": attempts, "leaseUntil": { "$lte": bson_date(now) } },
                    doc! { "$set": {
                        "leaseOwner": owner,
                        "leaseUntil": bson_date(lease_end(now, lease)),
                        "attempts": attempts + 1,
                    }},
                )
                .return_document(mongodb::options::ReturnDocument::After)
                .await?;
            if let Some(doc) = won {
                claimed.push(outbox_from_doc(&doc)?);
            }
        }
        Ok(claimed)
    }

    async fn complete_outbox(&self, event_ids: &[String]) -> Result<(), StoreError> {
        self.outbox
            .delete_many(doc! { "_id": { "$in": event_ids } })
            .await?;
        Ok(())
    }

    async fn release_outbox(&self, owner: &str, event_ids: &[String]) -> Result<(), StoreError> {
        self.outbox
            .update_many(
                doc! { "_id": { "$in": event_ids }, "leaseOwner": owner },
                doc! { "$set": { "leaseUntil": BsonDateTime::from_millis(0) }, "$unset": { "leaseOwner": "" } },
            )
            .await?;
        Ok(())
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let pending = self.outbox.count_documents(doc! {}).await?;
        let oldest = self
            .outbox
            .find_one(doc! {})
            .sort(doc! { "_id": 1 })
            .await?
            .and_then(|d| outbox_from_doc(&d).ok())
            .map(|e| e.created_at);
        Ok(OutboxStats { pending, oldest })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }
}
