//! The gRPC face of order-svc: checks each request and maps store outcomes to canonical
//! status codes.

use std::sync::Arc;
use std::time::Instant;

use tandem::domain::ContactFields;
use tandem::domain::{
    Address, EmailCheck, EmailList, OrderId, OrderStatus, Price, UserId, Violations, required_text,
};
use tandem::proto::order::v1::order_service_server::OrderService;
use tandem::proto::order::v1::{
    ApplyUserContactRequest, ApplyUserContactResponse, CreateOrderRequest, CreateOrderResponse,
    GetOrderRequest, GetOrderResponse, ListOrdersRequest, ListOrdersResponse,
    UpdateOrderDetailsRequest, UpdateOrderDetailsResponse, UpdateOrderStatusRequest,
    UpdateOrderStatusResponse,
};
use tandem_serving::grpc::{RpcMetrics, invalid_argument, status_with_field};
use tonic::{Code, Request, Response, Status};

use crate::model::{DetailsChange, ListFilter, Order, OrderItem, UserContact};
use crate::page_token;
use crate::store::{DetailsOutcome, OrderStore, StatusOutcome, StoreError};

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Most items one order may hold.
pub const MAX_ITEMS: usize = 1000;

pub struct OrderApi {
    store: Arc<dyn OrderStore>,
    metrics: RpcMetrics,
}

impl OrderApi {
    pub fn new(store: Arc<dyn OrderStore>, metrics: RpcMetrics) -> Self {
        Self { store, metrics }
    }

    async fn create(&self, request: CreateOrderRequest) -> Result<CreateOrderResponse, Status> {
        let mut violations = Violations::new();
        let user_id = violations.check("user_id", UserId::parse(&request.user_id));
        let items = parse_items(&request.items, &mut violations);
        let emails = parse_emails(&request.emails, &mut violations);
        let address = parse_address(request.delivery_address.as_ref(), &mut violations);
        let status = violations
            .check(
                "order_status",
                OrderStatus::from_proto(request.order_status),
            )
            .map(|s| s.unwrap_or(OrderStatus::UnderProcess));
        let (Some(user_id), Some(emails), Some(delivery_address), Some(status), true) =
            (user_id, emails, address, status, violations.is_empty())
        else {
            return Err(invalid_argument(violations));
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
        self.store
            .create_order(&order)
            .await
            .map_err(store_status)?;
        tracing::info!(order_id = %order.order_id, user_id = %order.user_id, "order created");
        Ok(CreateOrderResponse {
            order: Some(order.to_proto()),
        })
    }

    async fn get(&self, request: GetOrderRequest) -> Result<GetOrderResponse, Status> {
        let order_id = parse_order_id(&request.order_id)?;
        match self.store.get_order(order_id).await.map_err(store_status)? {
            Some(order) => Ok(GetOrderResponse {
                order: Some(order.to_proto()),
            }),
            None => Err(not_found(order_id)),
        }
    }

    async fn list(&self, request: ListOrdersRequest) -> Result<ListOrdersResponse, Status> {
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
            return Err(invalid_argument(violations));
        }
        // One more than a page tells whether another page follows.
        let mut orders = self
            .store
            .list_orders(filter, after, page_size + 1)
            .await
            .map_err(store_status)?;
        let next_page_token = if orders.len() > page_size {
            orders.truncate(page_size);
            orders
                .last()
                .map(|last| page_token::encode(last.cursor(), filter))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListOrdersResponse {
            orders: orders.iter().map(Order::to_proto).collect(),
            next_page_token,
        })
    }

    async fn update_status(
        &self,
        request: UpdateOrderStatusRequest,
    ) -> Result<UpdateOrderStatusResponse, Status> {
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
            return Err(invalid_argument(violations));
        };
        let outcome = self
            .store
            .update_status(order_id, status, tandem::domain::now())
            .await
            .map_err(store_status)?;
        match outcome {
            StatusOutcome::Moved(order) | StatusOutcome::Unchanged(order) => {
                Ok(UpdateOrderStatusResponse {
                    order: Some(order.to_proto()),
                })
            }
            StatusOutcome::Backward(order) => Err(status_with_field(
                Code::FailedPrecondition,
                "order_status",
                &format!(
                    "the order is {}; it cannot move back to {}",
                    order.status.as_str(),
                    status.as_str()
                ),
            )),
            StatusOutcome::NotFound => Err(not_found(order_id)),
        }
    }

    async fn update_details(
        &self,
        request: UpdateOrderDetailsRequest,
    ) -> Result<UpdateOrderDetailsResponse, Status> {
        let mut violations = Violations::new();
        let order_id = violations.check("order_id", OrderId::parse(&request.order_id));
        let fields = ContactFields::from_mask(
            request.update_mask,
            !request.emails.is_empty(),
            request.delivery_address.is_some(),
            &mut violations,
        );
        let emails = fields
            .emails
            .then(|| parse_emails(&request.emails, &mut violations))
            .flatten();
        let delivery_address = fields
            .delivery_address
            .then(|| parse_address(request.delivery_address.as_ref(), &mut violations))
            .flatten();
        let Some(order_id) = order_id.filter(|_| violations.is_empty()) else {
            return Err(invalid_argument(violations));
        };
        let change = DetailsChange {
            emails,
            delivery_address,
        };
        match self
            .store
            .update_details(order_id, &change, tandem::domain::now())
            .await
            .map_err(store_status)?
        {
            DetailsOutcome::Updated(order) => Ok(UpdateOrderDetailsResponse {
                order: Some(order.to_proto()),
            }),
            DetailsOutcome::AddressIsHistory(status) => Err(status_with_field(
                Code::FailedPrecondition,
                "delivery_address",
                &format!(
                    "the order is {}; its delivery address can no longer change",
                    status.as_str()
                ),
            )),
            DetailsOutcome::NotFound => Err(not_found(order_id)),
        }
    }

    async fn apply_user_contact(
        &self,
        request: ApplyUserContactRequest,
    ) -> Result<ApplyUserContactResponse, Status> {
        let mut violations = Violations::new();
        let user_id = violations.check("user_id", UserId::parse(&request.user_id));
        if request.contact_version < 1 {
            violations.add("contact_version", "must be at least 1");
        }
        let emails = parse_emails(&request.emails, &mut violations);
        let address = parse_address(request.delivery_address.as_ref(), &mut violations);
        let (Some(user_id), Some(emails), Some(delivery_address), true) =
            (user_id, emails, address, violations.is_empty())
        else {
            return Err(invalid_argument(violations));
        };
        let contact = UserContact {
            user_id,
            version: request.contact_version,
            emails,
            delivery_address,
        };
        let outcome = self
            .store
            .apply_user_contact(&contact, tandem::domain::now())
            .await
            .map_err(store_status)?;
        tracing::info!(
            %user_id,
            version = contact.version,
            matched = outcome.matched,
            modified = outcome.modified,
            "user contact applied"
        );
        Ok(ApplyUserContactResponse {
            matched_count: outcome.matched as i64,
            modified_count: outcome.modified as i64,
        })
    }
}

fn parse_order_id(raw: &str) -> Result<OrderId, Status> {
    OrderId::parse(raw).map_err(|e| {
        let mut v = Violations::new();
        v.add("order_id", e);
        invalid_argument(v)
    })
}

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

/// Orders keep whatever addresses their user has, so only the lenient check applies.
fn parse_emails(raw: &[String], violations: &mut Violations) -> Option<EmailList> {
    violations.check_nested("emails", EmailList::parse(raw, EmailCheck::Lenient))
}

fn parse_address(
    raw: Option<&tandem::proto::common::v1::Address>,
    violations: &mut Violations,
) -> Option<Address> {
    violations.check_nested("delivery_address", Address::parse(raw))
}

fn not_found(order_id: OrderId) -> Status {
    Status::not_found(format!("order {order_id} not found"))
}

/// Store failures as statuses; their causes go to the log only.
fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::Unavailable(cause) => {
            tracing::warn!(%cause, "order store unavailable");
            Status::unavailable("the order store is unavailable; try again")
        }
        StoreError::Internal(cause) => {
            tracing::error!(%cause, "order store failure");
            Status::internal("internal error")
        }
    }
}

macro_rules! observed {
    ($self:ident, $name:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self.metrics.observe($name, started, &result);
        result.map(Response::new)
    }};
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        observed!(self, "CreateOrder", self.create(request.into_inner()))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        observed!(self, "GetOrder", self.get(request.into_inner()))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        observed!(self, "ListOrders", self.list(request.into_inner()))
    }

    async fn update_order_status(
        &self,
        request: Request<UpdateOrderStatusRequest>,
    ) -> Result<Response<UpdateOrderStatusResponse>, Status> {
        observed!(
            self,
            "UpdateOrderStatus",
            self.update_status(request.into_inner())
        )
    }

    async fn update_order_details(
        &self,
        request: Request<UpdateOrderDetailsRequest>,
    ) -> Result<Response<UpdateOrderDetailsResponse>, Status> {
        observed!(
            self,
            "UpdateOrderDetails",
            self.update_details(request.into_inner())
        )
    }

    async fn apply_user_contact(
        &self,
        request: Request<ApplyUserContactRequest>,
    ) -> Result<Response<ApplyUserContactResponse>, Status> {
        observed!(
            self,
            "ApplyUserContact",
            self.apply_user_contact(request.into_inner())
        )
    }
}
