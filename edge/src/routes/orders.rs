//! /orders: always order-svc.

use crate::json::{Json, JsonBytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tandem::domain::{OrderStatus, Price, email_list_schema, json_path, text_schema};
use tandem::proto::common::v1 as common;
use tandem::proto::order::v1 as pb;
use utoipa::ToSchema;

use super::{ContactChangeBody, SUCCESS, order_page, rfc3339};
use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::json::{JsonBody, PathParam, parse_query, whole_number};
use crate::upstream::Call;

// === the REST shapes ===

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemInput {
    #[schema(schema_with = item_id)]
    pub item_id: String,
    /// At least 1.
    #[schema(example = 1, minimum = 1)]
    #[serde(deserialize_with = "whole_number")]
    pub quantity: i64,
    pub price: Price,
}

fn item_id() -> utoipa::openapi::Object {
    text_schema(true, "Study table")
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderInput {
    #[schema(example = "8eab397f-6890-4c61-b3f8-4f6c099e4c90", format = Uuid)]
    pub user_id: String,
    #[schema(min_items = 1, max_items = 1000)]
    pub items: Vec<ItemInput>,
    #[serde(alias = "userEmails")]
    #[schema(schema_with = email_list_schema)]
    pub emails: Vec<String>,
    pub delivery_address: common::Address,
    /// Defaults to "under process".
    pub order_status: Option<OrderStatus>,
}

impl From<CreateOrderInput> for pb::CreateOrderRequest {
    fn from(b: CreateOrderInput) -> Self {
        pb::CreateOrderRequest {
            user_id: b.user_id,
            items: b
                .items
                .into_iter()
                .map(|i| pb::OrderItem {
                    item_id: i.item_id,
                    quantity: i.quantity,
                    price: Some(common::Decimal {
                        value: i.price.to_string(),
                    }),
                })
                .collect(),
            emails: b.emails,
            delivery_address: Some(b.delivery_address),
            order_status: b.order_status.map_or(0, |s| s.to_proto() as i32),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusInput {
    pub order_status: OrderStatus,
}

/// Query of GET /orders.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only orders with this status.
    pub status: Option<OrderStatus>,
    /// Only orders of this user.
    #[param(format = Uuid)]
    pub user_id: Option<String>,
    /// Orders per page: 100 by default, 1000 at most (larger asks get 1000).
    #[param(minimum = 0)]
    pub limit: Option<i32>,
    /// `nextPageToken` of the previous page, with the same filters.
    pub page_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemView {
    pub item_id: String,
    pub quantity: i64,
    pub price: Price,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<ItemView>,
    pub emails: Vec<String>,
    pub delivery_address: common::Address,
    pub order_status: OrderStatus,
    pub created_at: String,
    pub updated_at: String,
}

/// An item's price from order-svc, or why it is unusable.
pub(super) fn item_price(item: &pb::OrderItem) -> Result<Price, String> {
    price(item.price.as_ref().map_or("", |p| p.value.as_str()))
}

/// A price's text from order-svc as a price, or why it is unusable.
pub(super) fn price(text: &str) -> Result<Price, String> {
    Price::parse(text).map_err(|e| format!("order-svc sent an unusable price {text:?}: {e}"))
}

/// An order's status from order-svc, or why it is unusable.
pub(super) fn order_status(raw: i32) -> Result<OrderStatus, String> {
    match OrderStatus::from_proto(raw) {
        Ok(Some(status)) => Ok(status),
        _ => Err("order-svc sent an order without a status".to_owned()),
    }
}

impl TryFrom<pb::Order> for OrderView {
    type Error = String;

    fn try_from(o: pb::Order) -> Result<Self, String> {
        let order_status = order_status(o.order_status)?;
        let items = o
            .items
            .into_iter()
            .map(|i| {
                Ok(ItemView {
                    price: item_price(&i)?,
                    item_id: i.item_id,
                    quantity: i.quantity,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(OrderView {
            order_id: o.order_id,
            user_id: o.user_id,
            items,
            emails: o.emails,
            delivery_address: o.delivery_address.unwrap_or_default(),
            order_status,
            created_at: rfc3339(o.created_at).unwrap_or_default(),
            updated_at: rfc3339(o.updated_at).unwrap_or_default(),
        })
    }
}

/// `{"status":"success","order":…}`
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub order: OrderView,
}

/// `{"status":"success","after":…}` for a changed order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderAfterEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub after: OrderView,
}

/// `{"status":"success","orders":[…],"nextPageToken":…}`
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrdersEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub orders: Vec<OrderView>,
    /// Present when more orders follow; pass it as `pageToken`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

// === the handlers ===

const UPSTREAM: &str = "the order service";

/// REST names of the fields order-svc names.
fn rename(field: &str) -> String {
    match field {
        "page_size" => "limit".to_owned(),
        "page_token" => "pageToken".to_owned(),
        other => json_path(other),
    }
}

fn upstream_error(status: &tonic::Status) -> ApiError {
    ApiError::from_status(status, UPSTREAM, rename)
}

/// GET /orders filters with `status`; bodies call it `orderStatus`.
fn list_rename(field: &str) -> String {
    match field {
        "order_status" => "status".to_owned(),
        other => rename(other),
    }
}

fn view(order: Option<pb::Order>) -> Result<OrderView, ApiError> {
    order
        .ok_or_else(|| "order-svc answered without an order".to_owned())
        .and_then(OrderView::try_from)
        .map_err(unusable)
}

/// An answer of order-svc the edge cannot pass on: logged, and a 500 to the client.
fn unusable(cause: String) -> ApiError {
    tracing::error!(%cause, "unusable answer from order-svc");
    upstream_error(&tonic::Status::internal(""))
}

/// A token limited to one user sees other users' orders as absent (the same 404 as an
/// unknown id).
fn only_owner(call: &Call, order_id: &str, owner: &str) -> Result<(), ApiError> {
    if call.caller.may_touch(owner) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("order {order_id} not found")))
    }
}

/// Before a change made with a token limited to one user: whether the order is that
/// user's. An order never changes hands, so reading it first leaves no race. Tokens
/// that are not limited skip the extra call.
async fn check_owner(state: &AppState, call: &Call, order_id: &str) -> Result<(), ApiError> {
    if call.caller.only_user().is_none() {
        return Ok(());
    }
    let reply = state
        .upstreams
        .orders(
            call,
            pb::GetOrderRequest {
                order_id: order_id.to_owned(),
            },
            |mut client, request| async move { client.get_order(request).await },
        )
        .await
        .map_err(|s| upstream_error(&s))?;
    let owner = reply.order.map(|o| o.user_id).unwrap_or_default();
    only_owner(call, order_id, &owner)
}

/// Create an order.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    request_body = CreateOrderInput,
    responses(
        (status = 201, description = "Created", body = OrderEnvelope,
            headers(("Location" = String, description = "/orders/{orderId}"))),
        ErrorResponses,
    )
)]
pub async fn create_order(
    State(state): State<AppState>,
    call: Call,
    JsonBody(body): JsonBody<CreateOrderInput>,
) -> Result<Response, ApiError> {
    super::users::only_own(&call, &body.user_id)?;
    let reply = state
        .upstreams
        .orders(
            &call,
            pb::CreateOrderRequest::from(body),
            |mut client, request| async move { client.create_order(request).await },
        )
        .await
        .map_err(|s| upstream_error(&s))?;
    let order = view(reply.order)?;
    let location = HeaderValue::from_str(&format!("/orders/{}", order.order_id)).ok();
    let mut response = (
        StatusCode::CREATED,
        Json(OrderEnvelope {
            status: SUCCESS,
            order,
        }),
    )
        .into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// List orders, oldest first, optionally by status and/or user, in pages.
#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrdersEnvelope),
        ErrorResponses,
    )
)]
pub async fn list_orders(
    State(state): State<AppState>,
    call: Call,
    RawQuery(query): RawQuery,
) -> Result<JsonBytes, ApiError> {
    let query: ListQuery = parse_query(query.as_deref().unwrap_or(""))?;
    // `userId=` names no user: refuse it rather than list everyone's orders.
    if query.user_id.as_deref() == Some("") {
        return Err(ApiError::invalid_field("userId", "must be a UUID"));
    }
    let user_id = match (call.caller.only_user(), query.user_id) {
        (None, asked) => asked.unwrap_or_default(),
        (Some(own), None) => own.to_owned(),
        (Some(own), Some(asked)) if asked == own => asked,
        // Another user's orders, to a token limited to one user: as if there were none.
        (Some(_), Some(_)) => return page(&[], ""),
    };
    let request = pb::ListOrdersRequest {
        order_status: query.status.map_or(0, |s| s.to_proto() as i32),
        user_id,
        page_size: query.limit.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let page = state
        .upstreams
        .orders_over(&call, request, order_page::list_orders)
        .await
        .map_err(|s| ApiError::from_status(&s, UPSTREAM, list_rename))?;
    match page {
        order_page::ListedPage::Json(json) => Ok(JsonBytes(json)),
        order_page::ListedPage::Unusable(cause) => Err(unusable(cause)),
    }
}

/// A page as the answer: [`OrdersEnvelope`]'s JSON, written by [`order_page`].
fn page(orders: &[pb::Order], next_page_token: &str) -> Result<JsonBytes, ApiError> {
    order_page::write(orders, next_page_token)
        .map(JsonBytes)
        .map_err(unusable)
}

/// Get an order.
#[utoipa::path(
    get,
    path = "/orders/{orderId}",
    tag = "orders",
    params(("orderId" = uuid::Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = OrderEnvelope),
        ErrorResponses,
    )
)]
pub async fn get_order(
    State(state): State<AppState>,
    call: Call,
    PathParam(order_id): PathParam,
) -> Result<Json<OrderEnvelope>, ApiError> {
    let reply = state
        .upstreams
        .orders(
            &call,
            pb::GetOrderRequest {
                order_id: order_id.clone(),
            },
            |mut client, request| async move { client.get_order(request).await },
        )
        .await
        .map_err(|s| upstream_error(&s))?;
    if let Some(order) = &reply.order {
        only_owner(&call, &order_id, &order.user_id)?;
    }
    Ok(Json(OrderEnvelope {
        status: SUCCESS,
        order: view(reply.order)?,
    }))
}

/// Move an order forward: under process → shipping → delivered. The current status again
/// is a no-op; moving back is refused (400, FAILED_PRECONDITION).
#[utoipa::path(
    put,
    path = "/orders/{orderId}/status",
    tag = "orders",
    request_body = StatusInput,
    params(("orderId" = uuid::Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order after the change", body = OrderAfterEnvelope),
        ErrorResponses,
    )
)]
pub async fn update_status(
    State(state): State<AppState>,
    call: Call,
    PathParam(order_id): PathParam,
    JsonBody(body): JsonBody<StatusInput>,
) -> Result<Json<OrderAfterEnvelope>, ApiError> {
    check_owner(&state, &call, &order_id).await?;
    let request = pb::UpdateOrderStatusRequest {
        order_id,
        order_status: body.order_status.to_proto() as i32,
    };
    let reply = state
        .upstreams
        .orders(&call, request, |mut client, request| async move {
            client.update_order_status(request).await
        })
        .await
        .map_err(|s| upstream_error(&s))?;
    Ok(Json(OrderAfterEnvelope {
        status: SUCCESS,
        after: view(reply.order)?,
    }))
}

/// Change an order's emails and/or delivery address (at least one, nothing else). The
/// address of an order that is shipping or delivered can no longer change (400,
/// FAILED_PRECONDITION).
#[utoipa::path(
    put,
    path = "/orders/{orderId}/details",
    tag = "orders",
    request_body = ContactChangeBody,
    params(("orderId" = uuid::Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order after the change", body = OrderAfterEnvelope),
        ErrorResponses,
    )
)]
pub async fn update_details(
    State(state): State<AppState>,
    call: Call,
    PathParam(order_id): PathParam,
    JsonBody(body): JsonBody<ContactChangeBody>,
) -> Result<Json<OrderAfterEnvelope>, ApiError> {
    let (emails, delivery_address, update_mask) = body.into_request_fields()?;
    check_owner(&state, &call, &order_id).await?;
    let request = pb::UpdateOrderDetailsRequest {
        order_id,
        emails,
        delivery_address,
        update_mask: Some(update_mask),
    };
    let reply = state
        .upstreams
        .orders(&call, request, |mut client, request| async move {
            client.update_order_details(request).await
        })
        .await
        .map_err(|s| upstream_error(&s))?;
    Ok(Json(OrderAfterEnvelope {
        status: SUCCESS,
        after: view(reply.order)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_whole_and_prices_keep_their_digits() {
        let item: ItemInput =
            serde_json::from_str(r#"{"itemId":"t","quantity":2.0,"price":15.990}"#).unwrap();
        assert_eq!(
            (item.quantity, item.price.to_string()),
            (2, "15.990".into())
        );
        assert!(
            serde_json::from_str::<ItemInput>(r#"{"itemId":"t","quantity":2.5,"price":1}"#)
                .is_err()
        );
    }
}
