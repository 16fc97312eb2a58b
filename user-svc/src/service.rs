//! The gRPC face of user-svc: checks each request with the flavor's rules and applies it
//! to the store. Refusals are [`UserError`]s; timing and counting are the server's layer.

use std::sync::Arc;

use tandem::domain::{
    Address, ContactChange, DELIVERY_ADDRESS_PATH, EMAILS_PATH, EmailList, Flavor, UserId,
    Violations, optional_text,
};
use tandem::proto::user::v1::user_service_server::UserService;
use tandem::proto::user::v1::{
    CreateUserRequest, CreateUserResponse, GetUserRequest, GetUserResponse,
    UpdateUserContactRequest, UpdateUserContactResponse,
};
use tandem_serving::grpc::request_id;
use tandem_serving::trace::TraceContext;

use crate::store::EventOrigin;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::error::UserError;
use crate::model::User;
use crate::relay::Handoff;
use crate::store::{ContactUpdated, UserStore};

pub struct UserApi {
    flavor: Flavor,
    store: Arc<dyn UserStore>,
    /// Wakes the outbox relay as soon as a change committed whose event it was not handed.
    outbox_written: Arc<Notify>,
    /// This process's relay, when it has one: it takes the events written here directly.
    handoff: Option<Handoff>,
}

impl UserApi {
    pub fn new(
        flavor: Flavor,
        store: Arc<dyn UserStore>,
        outbox_written: Arc<Notify>,
        handoff: Option<Handoff>,
    ) -> Self {
        Self {
            flavor,
            store,
            outbox_written,
            handoff,
        }
    }

    async fn create(&self, request: CreateUserRequest) -> Result<CreateUserResponse, UserError> {
        let mut violations = Violations::new();
        let mut text = |field: &str, raw: Option<String>| {
            raw.and_then(|raw| violations.check(field, optional_text(&raw)))
        };
        let first_name = text("first_name", request.first_name);
        let last_name = text("last_name", request.last_name);
        let phone_number = text("phone_number", request.phone_number);
        let emails = violations.check_nested(
            EMAILS_PATH,
            EmailList::parse(&request.emails, self.flavor.email_check()),
        );
        let address = violations.check_nested(
            DELIVERY_ADDRESS_PATH,
            Address::parse(request.delivery_address.as_ref()),
        );
        let (Some(emails), Some(delivery_address), true) = (emails, address, violations.is_empty())
        else {
            return Err(UserError::Invalid(violations));
        };
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
            .map_err(|e| UserError::from_store(e, user.user_id, Some(&user.emails)))?;
        tracing::info!(user_id = %user.user_id, flavor = %self.flavor, "user created");
        Ok(CreateUserResponse {
            user: Some(user.to_proto()),
        })
    }

    async fn get(&self, request: GetUserRequest) -> Result<GetUserResponse, UserError> {
        let user_id = UserId::parse(&request.user_id)
            .map_err(|e| UserError::Invalid(Violations::single("user_id", e)))?;
        let user = self
            .store
            .get_user(user_id)
            .await
            .map_err(|e| UserError::from_store(e, user_id, None))?
            .ok_or(UserError::NotFound(user_id))?;
        Ok(GetUserResponse {
            user: Some(user.to_proto()),
        })
    }

    async fn update_contact(
        &self,
        request: UpdateUserContactRequest,
        origin: EventOrigin,
    ) -> Result<UpdateUserContactResponse, UserError> {
        let mut violations = Violations::new();
        let user_id = violations.check("user_id", UserId::parse(&request.user_id));
        let change = ContactChange::parse(
            request.update_mask.as_ref(),
            &request.emails,
            request.delivery_address.as_ref(),
            self.flavor.email_check(),
            &mut violations,
        );
        let (Some(user_id), Some(change)) = (user_id, change) else {
            return Err(UserError::Invalid(violations));
        };
        let stamp = self.flavor.stamps_changes().then(tandem::domain::now);
        let slot = self.handoff.as_ref().and_then(Handoff::reserve);
        let ContactUpdated { user, event } = self
            .store
            .update_contact(
                user_id,
                &change,
                stamp,
                origin,
                slot.as_ref().map(|s| s.lease()),
            )
            .await
            .map_err(|e| UserError::from_store(e, user_id, change.emails.as_ref()))?;
        match slot {
            Some(slot) => slot.hand_over(event),
            None => self.outbox_written.notify_one(),
        }
        tracing::info!(user_id = %user.user_id, version = user.contact_version, flavor = %self.flavor, "contact updated");
        Ok(UpdateUserContactResponse {
            user: Some(user.to_proto()),
        })
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    async fn update_user_contact(
        &self,
        request: Request<UpdateUserContactRequest>,
    ) -> Result<Response<UpdateUserContactResponse>, Status> {
        // The call's span (set by the serving layer) is the parent of the relay's
        // publish: it goes into the outbox row with the change.
        let trace = request.extensions().get::<TraceContext>();
        let origin = EventOrigin {
            request_id: request_id(&request),
            traceparent: trace.map(TraceContext::traceparent),
            tracestate: trace.and_then(|t| t.tracestate.clone()),
        };
        Ok(Response::new(
            self.update_contact(request.into_inner(), origin).await?,
        ))
    }
}
