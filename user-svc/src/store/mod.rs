//! Where users and their outbox live: one trait, an embedded SQLite implementation (the
//! default) and a MongoDB one (production). Both pass the same contract tests
//! (tests/store_contract.rs).

mod mongo;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;
pub use tandem_messaging::EventOrigin;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tandem::domain::{ContactChange, UserId};
use tandem_messaging::UserUpdated;
use tandem_storage::StoreUrl;

use crate::model::User;

pub use mongo::MongoUserStore;
pub use sqlite::SqliteUserStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("no such user")]
    NotFound,
    /// A unique index refused the address (compared case-insensitively).
    #[error("email {email} is already used by another user")]
    EmailTaken { email: String },
    /// The store could not be reached or is overloaded; the caller may try again.
    #[error("user store unavailable: {0}")]
    Unavailable(String),
    #[error("user store failure: {0}")]
    Internal(String),
}

/// One `user.updated` event waiting in the outbox to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub event_id: String,
    pub user_id: String,
    pub version: i64,
    /// The message body, final: the relay publishes it byte for byte.
    pub payload: String,
    /// The request and trace that caused it, for the message's headers.
    pub origin: EventOrigin,
    pub created_at: DateTime<Utc>,
    /// How many times a relay has claimed it (1 on the first claim).
    pub attempts: i64,
}

impl OutboxEvent {
    /// The event recording `user`'s contact as it is after a change.
    pub fn for_user(user: &User, occurred_at: DateTime<Utc>, origin: EventOrigin) -> Self {
        let body = UserUpdated::new(user.contact(), occurred_at);
        Self {
            event_id: body.event_id.clone(),
            user_id: user.user_id.to_string(),
            version: user.contact_version,
            payload: body.to_json(),
            origin,
            created_at: occurred_at,
            attempts: 0,
        }
    }
}

/// A relay that publishes an event as soon as the change recording it commits: the event is
/// written already leased to it, so that relay never has to claim it (a write of its own,
/// queued behind the API's), and no other relay takes it while the lease holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxLease {
    pub owner: String,
    pub lease: Duration,
}

/// A contact change as stored: the user as changed, and the event recorded with it.
#[derive(Debug, Clone)]
pub struct ContactUpdated {
    pub user: User,
    /// Leased to the relay the change named, if any (`attempts` is then 1).
    pub event: OutboxEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    pub pending: u64,
    pub oldest: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Stores a new user. `EmailTaken` when another user has one of its emails.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;

    async fn get_user(&self, user_id: UserId) -> Result<Option<User>, StoreError>;

    /// Applies `change` to the user, increments the contact version, sets `updated_at` to
    /// `stamp` when given, and records the `user.updated` event (with the request id and
    /// trace context that caused it), all in one atomic write; returns the user as changed
    /// and the event. With `leased_to`, the event is written leased to that relay, which
    /// is then expected to publish it (or release it) itself.
    async fn update_contact(
        &self,
        user_id: UserId,
        change: &ContactChange,
        stamp: Option<DateTime<Utc>>,
        origin: EventOrigin,
        leased_to: Option<&OutboxLease>,
    ) -> Result<ContactUpdated, StoreError>;

    /// Leases up to `limit` unpublished events, oldest first, to `owner` for `lease`.
    /// Events leased to another relay whose lease has not run out are skipped, so two
    /// relays do not publish the same event unless one of them died mid-way.
    async fn claim_outbox(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Removes events the broker has confirmed.
    async fn complete_outbox(&self, event_ids: &[String]) -> Result<(), StoreError>;

    /// Gives back leased events that could not be published, so the next attempt does not
    /// wait for the lease to run out.
    async fn release_outbox(&self, owner: &str, event_ids: &[String]) -> Result<(), StoreError>;

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Adds what the store can tell about itself to the process's metrics (the SQLite
    /// writer's group commits); nothing by default.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

/// Opens the store a `--store` URL names, creating its schema, indexes and validators.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn UserStore>, StoreError> {
    Ok(match url {
        StoreUrl::Sqlite(path) => Arc::new(SqliteUserStore::open(path).await?),
        StoreUrl::Mongo(uri) => Arc::new(MongoUserStore::connect(uri).await?),
    })
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::seconds(30))
}
