//! The gRPC face of user-svc: checks each request, applies the flavor's rules, and maps
//! store outcomes to canonical status codes.

use std::sync::Arc;
use std::time::Instant;

use tandem::domain::ContactFields;
use tandem::domain::{Address, EmailList, UserId, Violations, optional_text};
use tandem::proto::user::v1::user_service_server::UserService;
use tandem::proto::user::v1::{
    CreateUserRequest, CreateUserResponse, GetUserRequest, GetUserResponse,
    UpdateUserContactRequest, UpdateUserContactResponse,
};
use tandem_serving::grpc::{RpcMetrics, invalid_argument, request_id, status_with_field};
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

use crate::flavor::Flavor;
use crate::model::{ContactChange, User};
use crate::store::{StoreError, UserStore};

pub struct UserApi {
    flavor: Flavor,
    store: Arc<dyn UserStore>,
    metrics: RpcMetrics,
    /// Wakes the outbox relay as soon as a change committed.
    outbox_written: Arc<Notify>,
}

impl UserApi {
    pub fn new(
        flavor: Flavor,
        store: Arc<dyn UserStore>,
        metrics: RpcMetrics,
        outbox_written: Arc<Notify>,
    ) -> Self {
        Self {
            flavor,
            store,
            metrics,
            outbox_written,
        }
    }

    fn parse_emails(&self, raw: &[String], violations: &mut Violations) -> Option<EmailList> {
        violations.check_nested("emails", EmailList::parse(raw, self.flavor.email_check()))
    }

    async fn create(&self, request: CreateUserRequest) -> Result<CreateUserResponse, Status> {
        let mut violations = Violations::new();
        let mut text = |field: &str, raw: Option<String>| {
            raw.and_then(|raw| violations.check(field, optional_text(&raw)))
        };
        let first_name = text("first_name", request.first_name);
        let last_name = text("last_name", request.last_name);
        let phone_number = text("phone_number", request.phone_number);
        let emails = self.parse_emails(&request.emails, &mut violations);
        let address = parse_address(request.delivery_address.as_ref(), &mut violations);
        let (Some(emails), Some(delivery_address)) = (emails, address) else {
            return Err(invalid_argument(violations));
        };
        if !violations.is_empty() {
            return Err(invalid_argument(violations));
        }
        let now = self.flavor.stamps_changes().then(tandem::domain::now);
        let user = User {
            user_id: UserId::new_random(),
            first_name,
            last_name,
            phone_number,
            emails,
            delivery_address,
            contact_version: 1,
            created_at: now,
            updated_at: now,
        };
        self.store
            .create_user(&user)
            .await
            .map_err(|e| store_status(e, &request.emails))?;
        tracing::info!(user_id = %user.user_id, flavor = %self.flavor, "user created");
        Ok(CreateUserResponse {
            user: Some(user.to_proto()),
        })
    }

    async fn get(&self, request: GetUserRequest) -> Result<GetUserResponse, Status> {
        let user_id = UserId::parse(&request.user_id)
            .map_err(|e| invalid_argument(violation("user_id", e)))?;
        match self
            .store
            .get_user(user_id)
            .await
            .map_err(|e| store_status(e, &[]))?
        {
            Some(user) => Ok(GetUserResponse {
                user: Some(user.to_proto()),
            }),
            None => Err(not_found(user_id)),
        }
    }

    async fn update_contact(
        &self,
        request: UpdateUserContactRequest,
        request_id: Option<String>,
    ) -> Result<UpdateUserContactResponse, Status> {
        let mut violations = Violations::new();
        let user_id = violations.check("user_id", UserId::parse(&request.user_id));
        let fields = ContactFields::from_mask(
            request.update_mask,
            !request.emails.is_empty(),
            request.delivery_address.is_some(),
            &mut violations,
        );
        let emails = fields
            .emails
            .then(|| self.parse_emails(&request.emails, &mut violations))
            .flatten();
        let delivery_address = fields
            .delivery_address
            .then(|| parse_address(request.delivery_address.as_ref(), &mut violations))
            .flatten();
        let Some(user_id) = user_id.filter(|_| violations.is_empty()) else {
            return Err(invalid_argument(violations));
        };
        let change = ContactChange {
            user_id,
            emails,
            delivery_address,
            updated_at: self.flavor.stamps_changes().then(tandem::domain::now),
            request_id,
        };
        let user = self
            .store
            .update_contact(&change)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => not_found(user_id),
                other => store_status(other, &request.emails),
            })?;
        self.outbox_written.notify_one();
        tracing::info!(user_id = %user.user_id, version = user.contact_version, flavor = %self.flavor, "contact updated");
        Ok(UpdateUserContactResponse {
            user: Some(user.to_proto()),
        })
    }
}

fn parse_address(
    raw: Option<&tandem::proto::common::v1::Address>,
    violations: &mut Violations,
) -> Option<Address> {
    violations.check_nested("delivery_address", Address::parse(raw))
}

fn violation(field: &str, description: String) -> Violations {
    let mut v = Violations::new();
    v.add(field, description);
    v
}

fn not_found(user_id: UserId) -> Status {
    Status::not_found(format!("user {user_id} not found"))
}

/// Store outcomes as statuses. Causes of internal failures go to the log only.
/// `emails` is the list the client sent, to name the field of a taken address.
fn store_status(err: StoreError, emails: &[String]) -> Status {
    match err {
        StoreError::NotFound => Status::not_found("user not found"),
        StoreError::EmailTaken { email } => {
            let index = emails
                .iter()
                .position(|e| e.to_lowercase() == email.to_lowercase())
                .unwrap_or(0);
            status_with_field(
                Code::AlreadyExists,
                &format!("emails[{index}]"),
                &format!("{email} is already used by another user"),
            )
        }
        StoreError::Unavailable(cause) => {
            tracing::warn!(%cause, "user store unavailable");
            Status::unavailable("the user store is unavailable; try again")
        }
        StoreError::Internal(cause) => {
            tracing::error!(%cause, "user store failure");
            Status::internal("internal error")
        }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let started = Instant::now();
        let result = self.create(request.into_inner()).await;
        self.metrics.observe("CreateUser", started, &result);
        result.map(Response::new)
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let started = Instant::now();
        let result = self.get(request.into_inner()).await;
        self.metrics.observe("GetUser", started, &result);
        result.map(Response::new)
    }

    async fn update_user_contact(
        &self,
        request: Request<UpdateUserContactRequest>,
    ) -> Result<Response<UpdateUserContactResponse>, Status> {
        let started = Instant::now();
        let request_id = request_id(&request);
        let result = self.update_contact(request.into_inner(), request_id).await;
        self.metrics.observe("UpdateUserContact", started, &result);
        result.map(Response::new)
    }
}
