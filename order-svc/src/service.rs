//! The gRPC face of order-svc: checks each request and applies it to the store. Refusals
//! are [`OrderError`]s; timing and counting are the server's layer.

use std::sync::Arc;

use tandem::domain::{
    Address, ContactChange, DELIVERY_ADDRESS_PATH, EMAILS_PATH, EmailCheck, EmailList, OrderId,
    OrderStatus, Price, UserContact, UserId, Violations, required_text,
};
use tandem::proto::order::v1::{
    ApplyUserContactRequest, ApplyUserContactResponse, ApplyUserContactResult,
    ApplyUserContactsRequest, ApplyUserContactsResponse, ContactRefused, CreateOrderRequest,
    CreateOrderResponse, GetOrderRequest, GetOrderResponse, ListOrdersRequest,
    UpdateOrderDetailsRequest, UpdateOrderDetailsResponse, UpdateOrderStatusRequest,
    UpdateOrderStatusResponse,
};
use tonic::{Request, Response, Status};

use tandem::proto::order::v1::apply_user_contact_result::Outcome;

use crate::error::OrderError;
use crate::grpc::order_service_server::OrderService;
use crate::model::{ListFilter, Order, OrderItem};
use crate::page_token;
use crate::store::{ApplyOutcome, DetailsOutcome, OrderStore, StatusOutcome};
use crate::wire::EncodedListOrdersResponse;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Most items one order may hold.
pub const MAX_ITEMS: usize = 1000;

/// Orders keep whatever addresses their user has, so only the lenient check applies.
const EMAIL_CHECK: EmailCheck = EmailCheck::Lenient;

pub struct OrderApi {
    store: Arc<dyn OrderStore>,
}

impl OrderApi {
    pub fn new(store: Arc<dyn OrderStore>) -> Self {
        Self { store }
    }

    async fn create(&self, request: CreateOrderRequest) -> Result<CreateOrderResponse, OrderError> {
        let mut violations = Violations::new();
        let user_id = violations.check("user_id", UserId::parse(&request.user_id));
        let items = parse_items(&request.items, &mut violations);
        let emails =
            violations.check_nested(EMAILS_PATH, EmailList::parse(&request.emails, EMAIL_CHECK));
        let address = violations.check_nested(
            DELIVERY_ADDRESS_PATH,
            Address::parse(request.delivery_address.as_ref()),
        );
        let status = violations
            .check(
                "order_status",
                OrderStatus::from_proto(request.order_status),
            )
            .map(|s| s.unwrap_or(OrderStatus::UnderProcess));
        let (Some(user_id), Some(emails), Some(delivery_address), Some(status), true) =
            (user_id, emails, address, status, violations.is_empty())
        else {
            return Err(OrderError::Invalid(violations));
        };
        let now = tandem::domain::now();
        let order = Order {
            order_id: OrderId::new_random(),
            user_id,
            items,
            emails,
            delivery_address,
            status,
            contact_version: 0,
            created_at: now,
            updated_at: now,
        };
        self.store.create_order(&order).await?;
        tracing::info!(order_id = %order.order_id, user_id = %order.user_id, "order created");
        Ok(CreateOrderResponse {
            order: Some(order.into_proto()),
        })
    }

    async fn get(&self, request: GetOrderRequest) -> Result<GetOrderResponse, OrderError> {
        let order_id = OrderId::parse(&request.order_id)
            .map_err(|e| OrderError::Invalid(Violations::single("order_id", e)))?;
        let order = self
            .store
            .get_order(order_id)
            .await?
            .ok_or(OrderError::NotFound(order_id))?;
        Ok(GetOrderResponse {
            order: Some(order.into_proto()),
        })
    }

    async fn list(
        &self,
        request: ListOrdersRequest,
    ) -> Result<EncodedListOrdersResponse, OrderError> {
        let mut violations = Violations::new();
        let status = violations
            .check(
                "order_status",
                OrderStatus::from_proto(request.order_status),
            )
            .flatten();
        let user_id = if request.user_id.is_empty() {
            None
        } else {
            violations.check("user_id", UserId::parse(&request.user_id))
        };
        let page_size = match request.page_size {
            n if n < 0 => {
                violations.add("page_size", "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            0 => DEFAULT_PAGE_SIZE,
            // Larger requests get the largest page (AIP-158).
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let filter = ListFilter { status, user_id };
        let after = if request.page_token.is_empty() {
            None
        } else {
            violations.check(
                "page_token",
                page_token::decode(&request.page_token, filter),
            )
        };
        if !violations.is_empty() {
            return Err(OrderError::Invalid(violations));
        }
        // The store says where the next page starts, when another follows.
        let page = self.store.list_page(filter, after, page_size).await?;
        let next_page_token = page
            .next
            .map(|cursor| page_token::encode(cursor, filter))
            .unwrap_or_default();
        Ok(EncodedListOrdersResponse::new(page, next_page_token))
    }

    async fn update_status(
        &self,
        request: UpdateOrderStatusRequest,
    ) -> Result<UpdateOrderStatusResponse, OrderError> {
        let mut violations = Violations::new();
        let order_id = violations.check("order_id", OrderId::parse(&request.order_id));
        let status = match OrderStatus::from_proto(request.order_status) {
            Ok(Some(status)) => Some(status),
            Ok(None) => {
                violations.add("order_status", "is required");
                None
            }
            Err(e) => {
                violations.add("order_status", e);
                None
            }
        };
        let (Some(order_id), Some(status)) = (order_id, status) else {
            return Err(OrderError::Invalid(violations));
        };
        let outcome = self
            .store
            .update_status(order_id, status, tandem::domain::now())
            .await?;
        match outcome {
            StatusOutcome::Moved(order) | StatusOutcome::Unchanged(order) => {
                Ok(UpdateOrderStatusResponse {
                    order: Some(order.into_proto()),
                })
            }
            StatusOutcome::Backward(order) => Err(OrderError::StatusBackward {
                current: order.status,
                requested: status,
            }),
            StatusOutcome::NotFound => Err(OrderError::NotFound(order_id)),
        }
    }

    async fn update_details(
        &self,
        request: UpdateOrderDetailsRequest,
    ) -> Result<UpdateOrderDetailsResponse, OrderError> {
        let mut violations = Violations::new();
        let order_id = violations.check("order_id", OrderId::parse(&request.order_id));
        let change = ContactChange::parse(
            request.update_mask.as_ref(),
            &request.emails,
            request.delivery_address.as_ref(),
            EMAIL_CHECK,
            &mut violations,
        );
        let (Some(order_id), Some(change)) = (order_id, change) else {
            return Err(OrderError::Invalid(violations));
        };
        match self
            .store
            .update_details(order_id, &change, tandem::domain::now())
            .await?
        {
            DetailsOutcome::Updated(order) => Ok(UpdateOrderDetailsResponse {
                order: Some(order.into_proto()),
            }),
            DetailsOutcome::AddressIsHistory(status) => Err(OrderError::AddressIsHistory(status)),
            DetailsOutcome::NotFound => Err(OrderError::NotFound(order_id)),
        }
    }

    async fn apply_user_contact(
        &self,
        request: ApplyUserContactRequest,
    ) -> Result<ApplyUserContactResponse, OrderError> {
        let contact = parse_contact(&request).map_err(OrderError::Invalid)?;
        let outcome = self
            .store
            .apply_user_contact(&contact, tandem::domain::now())
            .await?;
        Ok(applied_answer(&contact, outcome))
    }

    async fn apply_user_contacts(
        &self,
        request: ApplyUserContactsRequest,
    ) -> Result<ApplyUserContactsResponse, OrderError> {
        if request.contacts.len() > MAX_CONTACTS_PER_CALL {
            let mut violations = Violations::default();
            violations.add(
                "contacts",
                format!("at most {MAX_CONTACTS_PER_CALL} contacts per call"),
            );
            return Err(OrderError::Invalid(violations));
        }
        // Each contact is checked on its own; the valid ones are applied in one write.
        let parsed: Vec<Result<UserContact, Violations>> =
            request.contacts.iter().map(parse_contact).collect();
        let valid: Vec<UserContact> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .cloned()
            .collect();
        let applied = valid.len();
        let mut outcomes = if valid.is_empty() {
            Vec::new()
        } else {
            self.store
                .apply_user_contacts(valid, tandem::domain::now())
                .await?
        }
        .into_iter();
        let mut modified = 0;
        let results = parsed
            .into_iter()
            .map(|p| ApplyUserContactResult {
                outcome: Some(match p {
                    Ok(contact) => {
                        let outcome = outcomes.next().unwrap_or_default();
                        modified += outcome.modified;
                        Outcome::Applied(applied_answer(&contact, outcome))
                    }
                    Err(violations) => Outcome::Refused(ContactRefused {
                        message: format!("invalid request: {violations}"),
                    }),
                }),
            })
            .collect();
        tracing::debug!(
            contacts = request.contacts.len(),
            applied,
            modified,
            "batch of user contacts applied"
        );
        Ok(ApplyUserContactsResponse { results })
    }
}

fn parse_contact(request: &ApplyUserContactRequest) -> Result<UserContact, Violations> {
    UserContact::parse(
        &request.user_id,
        request.contact_version,
        &request.emails,
        request.delivery_address.as_ref(),
    )
}

/// Logs what applying `contact` did and answers it.
fn applied_answer(contact: &UserContact, outcome: ApplyOutcome) -> ApplyUserContactResponse {
    tracing::info!(
        user_id = %contact.user_id,
        version = contact.version,
        matched = outcome.matched,
        modified = outcome.modified,
        "user contact applied"
    );
    ApplyUserContactResponse {
        matched_count: outcome.matched as i64,
        modified_count: outcome.modified as i64,
    }
}

/// Most contacts in one ApplyUserContacts call.
pub const MAX_CONTACTS_PER_CALL: usize = 1000;

fn parse_items(
    raw: &[tandem::proto::order::v1::OrderItem],
    violations: &mut Violations,
) -> Vec<OrderItem> {
    if raw.is_empty() {
        violations.add("items", "at least one item is required");
    }
    if raw.len() > MAX_ITEMS {
        violations.add("items", format!("at most {MAX_ITEMS} items are allowed"));
        return Vec::new();
    }
    let mut items = Vec::with_capacity(raw.len());
    for (i, item) in raw.iter().enumerate() {
        let item_id = violations.check(format!("items[{i}].item_id"), required_text(&item.item_id));
        if item.quantity < 1 {
            violations.add(format!("items[{i}].quantity"), "must be at least 1");
        }
        let price = match &item.price {
            Some(price) => {
                violations.check(format!("items[{i}].price"), Price::parse(&price.value))
            }
            None => {
                violations.add(format!("items[{i}].price"), "is required");
                None
            }
        };
        if let (Some(item_id), Some(price)) = (item_id, price) {
            items.push(OrderItem {
                item_id,
                quantity: item.quantity,
                price,
            });
        }
    }
    items
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        Ok(Response::new(self.get(request.into_inner()).await?))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<EncodedListOrdersResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn update_order_status(
        &self,
        request: Request<UpdateOrderStatusRequest>,
    ) -> Result<Response<UpdateOrderStatusResponse>, Status> {
        Ok(Response::new(
            self.update_status(request.into_inner()).await?,
        ))
    }

    async fn update_order_details(
        &self,
        request: Request<UpdateOrderDetailsRequest>,
    ) -> Result<Response<UpdateOrderDetailsResponse>, Status> {
        Ok(Response::new(
            self.update_details(request.into_inner()).await?,
        ))
    }

    async fn apply_user_contact(
        &self,
        request: Request<ApplyUserContactRequest>,
    ) -> Result<Response<ApplyUserContactResponse>, Status> {
        Ok(Response::new(
            self.apply_user_contact(request.into_inner()).await?,
        ))
    }

    async fn apply_user_contacts(
        &self,
        request: Request<ApplyUserContactsRequest>,
    ) -> Result<Response<ApplyUserContactsResponse>, Status> {
        Ok(Response::new(
            self.apply_user_contacts(request.into_inner()).await?,
        ))
    }
}
