//! /users: each call goes to the user-svc flavor the routing dial picks (or the one
//! `X-User-Version` names), and the answer says which in `X-Served-By`.

use crate::json::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tandem::domain::{Flavor, email_list_schema, json_path, text_schema};
use tandem::proto::common::v1 as common;
use tandem::proto::user::v1 as pb;
use utoipa::ToSchema;

use super::{ContactChangeBody, SUCCESS, rfc3339};
use crate::AppState;
use crate::control::{compare, shadow};
use crate::error::{ApiError, ErrorResponses};
use crate::json::{JsonBody, PathParam};
use crate::routing;
use crate::upstream::{Call, Retry, Served};

// === the REST shapes ===

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUserInput {
    #[schema(schema_with = first_name)]
    pub first_name: Option<String>,
    #[schema(schema_with = last_name)]
    pub last_name: Option<String>,
    #[schema(schema_with = phone_number)]
    pub phone_number: Option<String>,
    /// At least one; unique across users, ignoring case.
    #[schema(schema_with = email_list_schema)]
    pub emails: Vec<String>,
    pub delivery_address: common::Address,
}

fn first_name() -> utoipa::openapi::Object {
    or_null(text_schema(false, "Robert"))
}

fn last_name() -> utoipa::openapi::Object {
    or_null(text_schema(false, "Williams"))
}

fn phone_number() -> utoipa::openapi::Object {
    or_null(text_schema(false, "+1-438-222-7890"))
}

/// An optional field may also be sent as `null` (meaning absent).
fn or_null(mut schema: utoipa::openapi::Object) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    schema.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    schema
}

impl From<CreateUserInput> for pb::CreateUserRequest {
    fn from(b: CreateUserInput) -> Self {
        pb::CreateUserRequest {
            first_name: b.first_name,
            last_name: b.last_name,
            phone_number: b.phone_number,
            emails: b.emails,
            delivery_address: Some(b.delivery_address),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    #[schema(example = "8eab397f-6890-4c61-b3f8-4f6c099e4c90")]
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    pub emails: Vec<String>,
    pub delivery_address: common::Address,
    /// Set when the user was created by user-svc v2 (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Set when the user was created or last changed by user-svc v2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl From<pb::User> for UserView {
    fn from(u: pb::User) -> Self {
        UserView {
            user_id: u.user_id,
            first_name: u.first_name,
            last_name: u.last_name,
            phone_number: u.phone_number,
            emails: u.emails,
            delivery_address: u.delivery_address.unwrap_or_default(),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

/// `{"status":"success","user":…}`
#[derive(Debug, Serialize, ToSchema)]
pub struct UserEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub user: UserView,
}

/// `{"status":"success","after":…}` for a changed user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserAfterEnvelope {
    #[schema(example = "success")]
    pub status: &'static str,
    pub after: UserView,
}

/// The values of `X-User-Version`, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // documentation only
pub enum UserVersion {
    V1,
    V2,
}

// === the handlers ===

const USER_VERSION: &str = "x-user-version";
const SERVED_BY: &str = "x-served-by";
const UPSTREAM: &str = "the user service";

/// The flavor for this request: forced by `X-User-Version`, else the routing dial's pick.
fn pick(state: &AppState, headers: &HeaderMap, user_id: Option<&str>) -> Result<Flavor, ApiError> {
    match headers.get(USER_VERSION) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::invalid_field("X-User-Version", "must be v1 or v2")),
        None => Ok(routing::choose(state.control.dial(), user_id)),
    }
}

/// A token limited to one user sees every other user as absent: the same 404 as an
/// unknown id, so it cannot learn which ids exist.
pub(super) fn only_own(call: &Call, user_id: &str) -> Result<(), ApiError> {
    if call.caller.may_touch(user_id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("user {user_id} not found")))
    }
}

/// Answers with the user-svc outcome, marked with the flavor that served it.
fn respond<T>(served: Served<T>, ok: impl FnOnce(T) -> Response) -> Response {
    let mut response = match served.result {
        Ok(value) => ok(value),
        Err(status) => ApiError::from_status(&status, UPSTREAM, json_path).into_response(),
    };
    response.headers_mut().insert(
        SERVED_BY,
        HeaderValue::from_static(served.flavor.service_name()),
    );
    response
}

fn user_or_internal(user: Option<pb::User>) -> Result<UserView, ApiError> {
    user.map(UserView::from).ok_or_else(|| {
        tracing::error!("user-svc answered without a user");
        ApiError::from_status(&tonic::Status::internal(""), UPSTREAM, json_path)
    })
}

/// Queues a read the client was answered for a shadow comparison (never a write).
fn shadow(
    state: &AppState,
    served: &Served<pb::GetUserResponse>,
    request_id: String,
    user_id: String,
) {
    let result = match &served.result {
        Ok(reply) => Ok(reply.user.clone().unwrap_or_default()),
        Err(status) => Err(status.clone()),
    };
    if let Some(answer) = compare::answer(&result) {
        let job = shadow::Job {
            request_id,
            user_id,
            served: served.flavor,
            answer,
        };
        state.control.shadow.offer(job, &state.control.recorder);
    }
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
    call: Call,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateUserInput>,
) -> Result<Response, ApiError> {
    if call.caller.only_user().is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "a token limited to one user cannot create users",
        ));
    }
    let flavor = pick(&state, &headers, None)?;
    let served = state
        .upstreams
        .user(
            flavor,
            Retry::OnlyIfNeverSent,
            &call,
            pb::CreateUserRequest::from(body),
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
    call: Call,
    PathParam(user_id): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    only_own(&call, &user_id)?;
    let flavor = pick(&state, &headers, Some(&user_id))?;
    let shadowed = state.control.shadow.wanted().then(|| user_id.clone());
    let served = state
        .upstreams
        .user(
            flavor,
            Retry::Safe,
            &call,
            pb::GetUserRequest { user_id },
            |mut client, request| async move { client.get_user(request).await },
        )
        .await;
    if let Some(user_id) = shadowed {
        shadow(&state, &served, call.request_id, user_id);
    }
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
    request_body = ContactChangeBody,
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
    call: Call,
    PathParam(user_id): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ContactChangeBody>,
) -> Result<Response, ApiError> {
    only_own(&call, &user_id)?;
    let (emails, delivery_address, update_mask) = body.into_request_fields()?;
    let flavor = pick(&state, &headers, Some(&user_id))?;
    let request = pb::UpdateUserContactRequest {
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
            &call,
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
