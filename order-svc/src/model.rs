//! An order as order-svc stores and serves it.

use chrono::{DateTime, Utc};
use tandem::domain::{Address, EmailList, OrderId, OrderStatus, Price, UserId};
use tandem::proto::common::v1::Decimal;
use tandem::proto::order::v1 as pb;
use tandem::proto::timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItem {
    pub item_id: String,
    pub quantity: i64,
    pub price: Price,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub items: Vec<OrderItem>,
    /// A copy of the user's emails, kept in step by ApplyUserContact.
    pub emails: EmailList,
    /// A copy of the user's address while the order is under process; history after.
    pub delivery_address: Address,
    pub status: OrderStatus,
    /// The user contact version last applied to this order (0 before any).
    pub contact_version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Order {
    /// The proto message. It takes the order's strings rather than copying them: a page
    /// of 50 orders is some 700 strings (bench/FINDINGS.md §9).
    pub fn into_proto(self) -> pb::Order {
        pb::Order {
            order_id: self.order_id.to_string(),
            user_id: self.user_id.to_string(),
            items: self
                .items
                .into_iter()
                .map(|item| pb::OrderItem {
                    price: Some(Decimal {
                        value: item.price.to_string(),
                    }),
                    item_id: item.item_id,
                    quantity: item.quantity,
                })
                .collect(),
            emails: self.emails.into_strings(),
            delivery_address: Some(self.delivery_address.into_proto()),
            order_status: self.status.to_proto() as i32,
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
            contact_version: self.contact_version,
        }
    }

    /// Where this order sits in the listing order (oldest first).
    pub fn cursor(&self) -> PageCursor {
        PageCursor {
            created_at: self.created_at,
            order_id: self.order_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListFilter {
    pub status: Option<OrderStatus>,
    pub user_id: Option<UserId>,
}

/// The position after which a page starts: orders sort by (created_at, order_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: DateTime<Utc>,
    pub order_id: OrderId,
}

impl PageCursor {
    /// Where `order`, as the list call answers it, sits; `None` if its id or creation
    /// time cannot be read back.
    pub fn of_proto(order: &pb::Order) -> Option<PageCursor> {
        let created_at = order.created_at.as_ref()?;
        Some(PageCursor {
            created_at: DateTime::from_timestamp(created_at.seconds, created_at.nanos as u32)?,
            order_id: OrderId::parse(&order.order_id).ok()?,
        })
    }
}
