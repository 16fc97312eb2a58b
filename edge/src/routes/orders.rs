//! /orders: always order-svc.

use axum::Extension;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tandem::proto::order::v1 as pb;

use super::RequestId;
use crate::AppState;
use crate::error::{ApiError, ErrorResponses, camel_path};
use crate::json::{JsonBody, PathParam, parse_query};
use crate::model::{
    CreateOrderInput, ListQuery, OrderAfterEnvelope, OrderContactInput, OrderEnvelope, OrderView,
    OrdersEnvelope, SUCCESS, StatusInput, contact_update,
};

const UPSTREAM: &str = "the order service";

/// REST names of the fields order-svc names.
fn rename(field: &str) -> String {
    match field {
        "page_size" => "limit".to_owned(),
        "page_token" => "pageToken".to_owned(),
        // GET /orders filters with `status`; bodies call it `orderStatus`.
        other => camel_path(other),
    }
}

fn upstream_error(status: &tonic::Status) -> ApiError {
    ApiError::from_status(status, UPSTREAM, rename)
}

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
        .map_err(|cause| {
            tracing::error!(%cause, "unusable answer from order-svc");
            upstream_error(&tonic::Status::internal(""))
        })
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
    Extension(RequestId(request_id)): Extension<RequestId>,
    JsonBody(body): JsonBody<CreateOrderInput>,
) -> Result<Response, ApiError> {
    let reply = state
        .upstreams
        .orders(
            &request_id,
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
    Extension(RequestId(request_id)): Extension<RequestId>,
    RawQuery(query): RawQuery,
) -> Result<Json<OrdersEnvelope>, ApiError> {
    let query: ListQuery = parse_query(query.as_deref().unwrap_or(""))?;
    // `userId=` names no user: refuse it rather than list everyone's orders.
    if query.user_id.as_deref() == Some("") {
        return Err(ApiError::invalid_field("userId", "must be a UUID"));
    }
    let request = pb::ListOrdersRequest {
        order_status: query.status.map_or(0, |s| s.to_proto()),
        user_id: query.user_id.unwrap_or_default(),
        page_size: query.limit.unwrap_or(0),
        page_token: query.page_token.unwrap_or_default(),
    };
    let reply = state
        .upstreams
        .orders(&request_id, request, |mut client, request| async move {
            client.list_orders(request).await
        })
        .await
        .map_err(|s| ApiError::from_status(&s, UPSTREAM, list_rename))?;
    let orders = reply
        .orders
        .into_iter()
        .map(|o| view(Some(o)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(OrdersEnvelope {
        status: SUCCESS,
        orders,
        next_page_token: (!reply.next_page_token.is_empty()).then_some(reply.next_page_token),
    }))
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
    Extension(RequestId(request_id)): Extension<RequestId>,
    PathParam(order_id): PathParam,
) -> Result<Json<OrderEnvelope>, ApiError> {
    let reply = state
        .upstreams
        .orders(
            &request_id,
            pb::GetOrderRequest { order_id },
            |mut client, request| async move { client.get_order(request).await },
        )
        .await
        .map_err(|s| upstream_error(&s))?;
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
    Extension(RequestId(request_id)): Extension<RequestId>,
    PathParam(order_id): PathParam,
    JsonBody(body): JsonBody<StatusInput>,
) -> Result<Json<OrderAfterEnvelope>, ApiError> {
    let request = pb::UpdateOrderStatusRequest {
        order_id,
        order_status: body.order_status.to_proto(),
    };
    let reply = state
        .upstreams
        .orders(&request_id, request, |mut client, request| async move {
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
    request_body = OrderContactInput,
    params(("orderId" = uuid::Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order after the change", body = OrderAfterEnvelope),
        ErrorResponses,
    )
)]
pub async fn update_details(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    PathParam(order_id): PathParam,
    JsonBody(body): JsonBody<OrderContactInput>,
) -> Result<Json<OrderAfterEnvelope>, ApiError> {
    if body.emails.is_none() && body.delivery_address.is_none() {
        return Err(ApiError::invalid(
            "nothing to update: give emails and/or deliveryAddress",
            Vec::new(),
        ));
    }
    let (emails, delivery_address, update_mask) =
        contact_update(body.emails, body.delivery_address);
    let request = pb::UpdateOrderDetailsRequest {
        order_id,
        emails,
        delivery_address,
        update_mask: Some(update_mask),
    };
    let reply = state
        .upstreams
        .orders(&request_id, request, |mut client, request| async move {
            client.update_order_details(request).await
        })
        .await
        .map_err(|s| upstream_error(&s))?;
    Ok(Json(OrderAfterEnvelope {
        status: SUCCESS,
        after: view(reply.order)?,
    }))
}
