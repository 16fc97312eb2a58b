//! Where orders live: one trait, an embedded SQLite implementation (the default) and a
//! MongoDB one (production), held to the same contract tests (tests/store_contract.rs).
//! Every conditional change is one atomic step in the store, never read-then-write in
//! the service.

mod mongo;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tandem::domain::{ContactChange, OrderId, OrderStatus, UserContact};
use tandem_storage::StoreUrl;

use crate::model::{ListFilter, Order, PageCursor};
use crate::wire::{Page, PageEncoder};

pub use mongo::MongoOrderStore;
pub use sqlite::SqliteOrderStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or is overloaded; the caller may try again.
    #[error("order store unavailable: {0}")]
    Unavailable(String),
    #[error("order store failure: {0}")]
    Internal(String),
}

/// What a status change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOutcome {
    /// The order moved forward; here it is now.
    Moved(Order),
    /// The order already had that status; nothing changed.
    Unchanged(Order),
    /// The order is further along than that status.
    Backward(Order),
    NotFound,
}

/// What a details change did.
#[expect(
    clippy::large_enum_variant,
    reason = "one short-lived value per request; boxing would only add an allocation"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetailsOutcome {
    Updated(Order),
    /// The change would alter the address of an order that is shipping or delivered.
    AddressIsHistory(OrderStatus),
    NotFound,
}

/// What ApplyUserContact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOutcome {
    /// Orders of the user.
    pub matched: u64,
    /// Orders whose applied contact version was lower, now updated.
    pub modified: u64,
}

#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    async fn create_order(&self, order: &Order) -> Result<(), StoreError>;

    async fn get_order(&self, order_id: OrderId) -> Result<Option<Order>, StoreError>;

    /// Up to `limit` orders matching `filter`, oldest first, starting after `after`.
    async fn list_orders(
        &self,
        filter: ListFilter,
        after: Option<PageCursor>,
        limit: usize,
    ) -> Result<Vec<Order>, StoreError>;

    /// A page of the list call: up to `page_size` orders after `after`, encoded as they
    /// are read (src/wire.rs), and where the next page starts if more follow. The
    /// embedded store builds each message straight from its row, on its reader thread;
    /// by default the page is made from `list_orders`.
    async fn list_page(
        &self,
        filter: ListFilter,
        after: Option<PageCursor>,
        page_size: usize,
    ) -> Result<Page, StoreError> {
        let mut page = PageEncoder::new(page_size);
        for order in self.list_orders(filter, after, page_size + 1).await? {
            page.push(order.into_proto());
        }
        page.finish()
    }

    /// Sets `status` if that moves the order forward, atomically.
    async fn update_status(
        &self,
        order_id: OrderId,
        status: OrderStatus,
        now: DateTime<Utc>,
    ) -> Result<StatusOutcome, StoreError>;

    /// Applies `change`, refusing (atomically) to alter the address of an order that is
    /// no longer under process. Giving an order the address it already has is allowed.
    async fn update_details(
        &self,
        order_id: OrderId,
        change: &ContactChange,
        now: DateTime<Utc>,
    ) -> Result<DetailsOutcome, StoreError>;

    /// Copies `contact` onto the user's orders whose applied version is lower: emails
    /// always, the address only while the order is under process.
    async fn apply_user_contact(
        &self,
        contact: &UserContact,
        now: DateTime<Utc>,
    ) -> Result<ApplyOutcome, StoreError>;

    /// `apply_user_contact` for each of `contacts`, in order, as one write where the
    /// store can (the sync worker's batches). Later contacts of one user see the earlier
    /// ones applied, so versions still decide. The outcomes are in the order given.
    async fn apply_user_contacts(
        &self,
        contacts: Vec<UserContact>,
        now: DateTime<Utc>,
    ) -> Result<Vec<ApplyOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(contacts.len());
        for contact in &contacts {
            outcomes.push(self.apply_user_contact(contact, now).await?);
        }
        Ok(outcomes)
    }

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Adds what the store can tell about itself to the process's metrics (the SQLite
    /// writer's group commits); nothing by default.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

/// Opens the store a `--store` URL names, creating its schema, indexes and validators.
pub async fn open(url: &StoreUrl) -> Result<Arc<dyn OrderStore>, StoreError> {
    Ok(match url {
        StoreUrl::Sqlite(path) => Arc::new(SqliteOrderStore::open(path).await?),
        StoreUrl::Mongo(uri) => Arc::new(MongoOrderStore::connect(uri).await?),
    })
}

/// The outcome of a status change, decided from the status the order has.
fn status_outcome(current: Order, requested: OrderStatus) -> StatusOutcome {
    use tandem::domain::StatusChange;
    match current.status.change_to(requested) {
        StatusChange::Same => StatusOutcome::Unchanged(current),
        StatusChange::Backward => StatusOutcome::Backward(current),
        // The atomic forward move did not match, yet the order is behind: it can only
        // have moved since; report what it is now rather than guess.
        StatusChange::Forward => StatusOutcome::Unchanged(current),
    }
}

/// Statuses an order can move to `target` from.
fn statuses_before(target: OrderStatus) -> Vec<OrderStatus> {
    OrderStatus::ALL
        .into_iter()
        .filter(|s| *s < target)
        .collect()
}
