//! The one error policy of user-svc: every refusal and failure of a call is a
//! [`UserError`], and becomes a gRPC status in exactly one place. Causes of internal
//! failures go to the log, never to the client.

use tandem::domain::{EmailList, UserId, Violations};
use tandem_serving::grpc::{invalid_argument, status_with_field};
use tonic::{Code, Status};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid request: {0}")]
    Invalid(Violations),
    #[error("user {0} not found")]
    NotFound(UserId),
    /// Another user has this address; `field` names it in the request (`emails[1]`).
    #[error("{email} is already used by another user")]
    EmailTaken { field: String, email: String },
    #[error("the user store is unavailable: {0}")]
    Unavailable(String),
    #[error("user store failure: {0}")]
    Internal(String),
}

impl UserError {
    /// What a store's refusal means for a request about `user_id` that asked for
    /// `emails`.
    pub fn from_store(err: StoreError, user_id: UserId, emails: Option<&EmailList>) -> UserError {
        match err {
            StoreError::NotFound => UserError::NotFound(user_id),
            StoreError::EmailTaken { email } => {
                let taken = email.to_lowercase();
                let index = emails
                    .and_then(|list| list.as_slice().iter().position(|e| e.normalized() == taken))
                    .unwrap_or(0);
                UserError::EmailTaken {
                    field: format!("emails[{index}]"),
                    email,
                }
            }
            StoreError::Unavailable(cause) => UserError::Unavailable(cause),
            StoreError::Internal(cause) => UserError::Internal(cause),
        }
    }
}

impl From<UserError> for Status {
    fn from(err: UserError) -> Status {
        match err {
            UserError::Invalid(violations) => invalid_argument(violations),
            UserError::NotFound(user_id) => Status::not_found(format!("user {user_id} not found")),
            UserError::EmailTaken { field, email } => status_with_field(
                Code::AlreadyExists,
                &field,
                &format!("{email} is already used by another user"),
            ),
            UserError::Unavailable(cause) => {
                tracing::warn!(%cause, "user store unavailable");
                Status::unavailable("the user store is unavailable; try again")
            }
            UserError::Internal(cause) => {
                tracing::error!(%cause, "user store failure");
                Status::internal("internal error")
            }
        }
    }
}
