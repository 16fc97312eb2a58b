//! The JSON body of every error any tandem HTTP endpoint answers:
//! `{"status":"error","code","detail","fields":[{"field","description"}]}`. The edge's
//! error policy builds it; the ops ports use it too.

use serde::Serialize;

/// One bad field of a request, named by its path in the JSON body (`emails[0]`,
/// `deliveryAddress.postalCode`) or query (`limit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub description: String,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Always "error".
    #[cfg_attr(feature = "openapi", schema(example = "error"))]
    pub status: &'static str,
    /// A google.rpc.Code name (INVALID_ARGUMENT, NOT_FOUND, …), or for HTTP-level refusals
    /// NOT_FOUND, METHOD_NOT_ALLOWED, UNSUPPORTED_MEDIA_TYPE, PAYLOAD_TOO_LARGE,
    /// REQUEST_TIMEOUT.
    #[cfg_attr(feature = "openapi", schema(example = "INVALID_ARGUMENT"))]
    pub code: &'static str,
    /// A sentence for humans.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "invalid request: emails[0]: is not a valid email address")
    )]
    pub detail: String,
    /// The fields at fault, if the error is about fields.
    pub fields: Vec<FieldError>,
}

impl ErrorBody {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status: "error",
            code,
            detail: detail.into(),
            fields: Vec::new(),
        }
    }
}
