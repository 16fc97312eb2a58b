//! The one error policy of the public API: every failure is JSON
//! `{"status":"error","code","detail","fields"}`, and a gRPC status becomes an HTTP status
//! through one table (the canonical google.rpc.Code mapping grpc-gateway uses). Internal
//! causes go to the log; clients get a sentence that is safe to show.

use crate::json::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::Code;

pub use tandem_serving::http_error::{ErrorBody, FieldError};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub http: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub fields: Vec<FieldError>,
    /// Extra response headers (WWW-Authenticate, Retry-After).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(http: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            http,
            code,
            detail: detail.into(),
            fields: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn invalid(detail: impl Into<String>, fields: Vec<FieldError>) -> Self {
        Self {
            fields,
            ..Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", detail)
        }
    }

    pub fn invalid_field(field: &str, description: &str) -> Self {
        Self::invalid(
            format!("invalid request: {field}: {description}"),
            vec![FieldError {
                field: field.to_owned(),
                description: description.to_owned(),
            }],
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", detail)
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
        self
    }

    /// A header made at run time; a value that is not a valid header is left out.
    pub fn with_owned_header(mut self, name: HeaderName, value: String) -> Self {
        if let Ok(value) = HeaderValue::try_from(value) {
            self.headers.push((name, value));
        }
        self
    }

    /// A gRPC status from `upstream` (a name such as "the user service"), with its field
    /// violations renamed to REST names by `rename`.
    pub fn from_status(
        status: &tonic::Status,
        upstream: &str,
        rename: impl Fn(&str) -> String,
    ) -> Self {
        let code = status.code();
        let http = http_status(code);
        let fields: Vec<FieldError> = tandem_serving::grpc::field_violations(status)
            .into_iter()
            .map(|v| FieldError {
                field: rename(&v.field),
                description: v.description,
            })
            .collect();
        let detail = match code {
            // Causes of server faults stay in the upstream's log.
            Code::Unknown | Code::Internal | Code::DataLoss => {
                format!("{upstream} failed; the error was logged")
            }
            Code::Unavailable => format!("{upstream} is unavailable; try again"),
            Code::DeadlineExceeded => format!("{upstream} did not answer in time"),
            Code::Cancelled => "the request was cancelled".to_owned(),
            _ if !fields.is_empty() => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.description))
                    .collect();
                let prefix = if code == Code::InvalidArgument {
                    "invalid request: "
                } else {
                    ""
                };
                format!("{prefix}{}", parts.join("; "))
            }
            _ => status.message().to_owned(),
        };
        Self {
            http,
            code: code_name(code),
            detail,
            fields,
            headers: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            fields: self.fields,
            ..ErrorBody::new(self.code, self.detail)
        };
        let mut response = (self.http, Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// THE table: gRPC status code → HTTP status (google.rpc.Code's documented mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request (nginx), as grpc-gateway uses.
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status code"),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The google.rpc.Code name of a code, as clients see it in `code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_documented_http_status() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Unknown, 500),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn internal_causes_never_reach_the_client() {
        let status = tonic::Status::internal("sqlite: disk I/O error at /var/lib/secret");
        let err = ApiError::from_status(&status, "the order service", tandem::domain::json_path);
        assert_eq!(err.http, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!err.detail.contains("sqlite"), "{}", err.detail);
    }
}

/// The error answers any API operation may give, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its derive is used
pub enum ErrorResponses {
    /// Bad request: malformed JSON, a field the route does not take, a value of the wrong
    /// type, or a value a service refused (`fields` names them); also a state change
    /// that is not allowed (FAILED_PRECONDITION).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or invalid credentials: the admin token on /admin, a bearer token on the
    /// API when the edge verifies tokens (with `WWW-Authenticate`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token lacks the route's scope, or is limited to one user and the route is not
    /// about that user.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such user, order or route.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The request took too long, reading its body included.
    #[response(status = 408)]
    RequestTimeout(ErrorBody),
    /// Conflict: an email another user already has.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is over 64 KiB.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// The body is not sent as application/json.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Over the client's rate limit (see `Retry-After` and `RateLimit`), or too many
    /// failed admin logins from this address.
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// A service failed; the cause was logged.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// A service is unavailable; try again.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// A service did not answer within the deadline.
    #[response(status = 504)]
    GatewayTimeout(ErrorBody),
}
