//! The one error policy of order-svc: every refusal and failure of a call is an
//! [`OrderError`], and becomes a gRPC status in exactly one place. Causes of internal
//! failures go to the log, never to the client.

use tandem::domain::{OrderId, OrderStatus, Violations};
use tandem_serving::grpc::{invalid_argument, status_with_field};
use tonic::{Code, Status};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("invalid request: {0}")]
    Invalid(Violations),
    #[error("order {0} not found")]
    NotFound(OrderId),
    /// History does not run backwards.
    #[error("the order is {}; it cannot move back to {}", .current.as_str(), .requested.as_str())]
    StatusBackward {
        current: OrderStatus,
        requested: OrderStatus,
    },
    /// The address of an order past "under process" is history.
    #[error("the order is {}; its delivery address can no longer change", .0.as_str())]
    AddressIsHistory(OrderStatus),
    #[error("the order store is unavailable: {0}")]
    Unavailable(String),
    #[error("order store failure: {0}")]
    Internal(String),
}

impl From<StoreError> for OrderError {
    fn from(err: StoreError) -> OrderError {
        match err {
            StoreError::Unavailable(cause) => OrderError::Unavailable(cause),
            StoreError::Internal(cause) => OrderError::Internal(cause),
        }
    }
}

impl From<OrderError> for Status {
    fn from(err: OrderError) -> Status {
        let sentence = err.to_string();
        match err {
            OrderError::Invalid(violations) => invalid_argument(violations),
            OrderError::NotFound(_) => Status::not_found(sentence),
            OrderError::StatusBackward { .. } => {
                status_with_field(Code::FailedPrecondition, "order_status", &sentence)
            }
            OrderError::AddressIsHistory(_) => {
                status_with_field(Code::FailedPrecondition, "delivery_address", &sentence)
            }
            OrderError::Unavailable(cause) => {
                tracing::warn!(%cause, "order store unavailable");
                Status::unavailable("the order store is unavailable; try again")
            }
            OrderError::Internal(cause) => {
                tracing::error!(%cause, "order store failure");
                Status::internal("internal error")
            }
        }
    }
}
