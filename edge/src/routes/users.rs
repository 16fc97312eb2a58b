//! /users: each call goes to the user-svc flavor the routing dial picks (or the one
//! `X-User-Version` names), and the answer says which in `X-Served-By`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tandem::proto::user::v1::{GetUserRequest, UpdateUserContactRequest};

use super::RequestId;
use crate::AppState;
use crate::error::{ApiError, ErrorResponses, camel_path};
use crate::json::{JsonBody, PathParam};
use crate::model::{
    ContactInput, CreateUserInput, SUCCESS, UserAfterEnvelope, UserEnvelope, UserView,
    contact_update,
};
use crate::routing::{self, Flavor};
use crate::upstream::{Retry, Served};

const USER_VERSION: &str = "x-user-version";

/// The values of `X-User-Version`, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documentation only
pub enum UserVersion {
    V1,
    V2,
}
const SERVED_BY: &str = "x-served-by";
const UPSTREAM: &str = "the user service";

/// The flavor for this request: forced by `X-User-Version`, else the routing dial's pick.
fn pick(state: &AppState, headers: &HeaderMap, user_id: Option<&str>) -> Result<Flavor, ApiError> {
    match headers.get(USER_VERSION) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(Flavor::parse)
            .ok_or_else(|| ApiError::invalid_field("X-User-Version", "must be v1 or v2")),
        None => Ok(routing::choose(state.routing.current(), user_id)),
    }
}

/// REST names of the fields user-svc names (`user_id` is the path's `userId`).
fn rename(field: &str) -> String {
    camel_path(field)
}

/// Answers with the user-svc outcome, marked with the flavor that served it.
fn respond<T>(served: Served<T>, ok: impl FnOnce(T) -> Response) -> Response {
    let mut response = match served.result {
        Ok(value) => ok(value),
        Err(status) => ApiError::from_status(&status, UPSTREAM, rename).into_response(),
    };
    response.headers_mut().insert(
        SERVED_BY,
        HeaderValue::from_static(served.flavor.served_by()),
    );
    response
}

fn user_or_internal(user: Option<tandem::proto::user::v1::User>) -> Result<UserView, ApiError> {
    user.map(UserView::from).ok_or_else(|| {
        tracing::error!("user-svc answered without a user");
        ApiError::from_status(&tonic::Status::internal(""), UPSTREAM, rename)
    })
}

/// Create a user.
#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    request_body = CreateUserInput,
    params(("X-User-Version" = Option<UserVersion>, Header, nullable = false, description = "Force a flavor")),
    responses(
        (status = 201, description = "Created", body = UserEnvelope,
            headers(("Location" = String, description = "/users/{userId}"),
                    ("X-Served-By" = String, description = "user-svc-v1 or user-svc-v2"))),
        ErrorResponses,
    )
)]
pub async fn create_user(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateUserInput>,
) -> Result<Response, ApiError> {
    let flavor = pick(&state, &headers, None)?;
    let served = state
        .upstreams
        .user(
            flavor,
            Retry::OnlyIfNeverSent,
            &request_id,
            body.into(),
            |mut client, request| async move { client.create_user(request).await },
        )
        .await;
    Ok(respond(served, |reply| {
        match user_or_internal(reply.user) {
            Ok(user) => {
                let location = format!("/users/{}", user.user_id);
                let mut response = (
                    StatusCode::CREATED,
                    Json(UserEnvelope {
                        status: SUCCESS,
                        user,
                    }),
                )
                    .into_response();
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
            }
            Err(error) => error.into_response(),
        }
    }))
}

/// Get a user.
#[utoipa::path(
    get,
    path = "/users/{userId}",
    tag = "users",
    params(
        ("userId" = uuid::Uuid, Path, description = "The user's id"),
        ("X-User-Version" = Option<UserVersion>, Header, nullable = false, description = "Force a flavor"),
    ),
    responses(
        (status = 200, description = "The user", body = UserEnvelope,
            headers(("X-Served-By" = String, description = "user-svc-v1 or user-svc-v2"))),
        ErrorResponses,
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    PathParam(user_id): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let flavor = pick(&state, &headers, Some(&user_id))?;
    let served = state
        .upstreams
        .user(
            flavor,
            Retry::Safe,
            &request_id,
            GetUserRequest { user_id },
            |mut client, request| async move { client.get_user(request).await },
        )
        .await;
    Ok(respond(served, |reply| {
        match user_or_internal(reply.user) {
            Ok(user) => Json(UserEnvelope {
                status: SUCCESS,
                user,
            })
            .into_response(),
            Err(error) => error.into_response(),
        }
    }))
}

/// Change a user's emails and/or delivery address. The change reaches the user's orders
/// shortly after (through the contact sync).
#[utoipa::path(
    put,
    path = "/users/{userId}",
    tag = "users",
    request_body = ContactInput,
    params(
        ("userId" = uuid::Uuid, Path, description = "The user's id"),
        ("X-User-Version" = Option<UserVersion>, Header, nullable = false, description = "Force a flavor"),
    ),
    responses(
        (status = 200, description = "The user after the change", body = UserAfterEnvelope,
            headers(("X-Served-By" = String, description = "user-svc-v1 or user-svc-v2"))),
        ErrorResponses,
    )
)]
pub async fn update_user(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    PathParam(user_id): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ContactInput>,
) -> Result<Response, ApiError> {
    if body.emails.is_none() && body.delivery_address.is_none() {
        return Err(ApiError::invalid(
            "nothing to update: give emails and/or deliveryAddress",
            Vec::new(),
        ));
    }
    let flavor = pick(&state, &headers, Some(&user_id))?;
    let (emails, delivery_address, update_mask) =
        contact_update(body.emails, body.delivery_address);
    let request = UpdateUserContactRequest {
        user_id,
        emails,
        delivery_address,
        update_mask: Some(update_mask),
    };
    let served = state
        .upstreams
        .user(
            flavor,
            Retry::OnlyIfNeverSent,
            &request_id,
            request,
            |mut client, request| async move { client.update_user_contact(request).await },
        )
        .await;
    Ok(respond(served, |reply| {
        match user_or_internal(reply.user) {
            Ok(after) => Json(UserAfterEnvelope {
                status: SUCCESS,
                after,
            })
            .into_response(),
            Err(error) => error.into_response(),
        }
    }))
}
