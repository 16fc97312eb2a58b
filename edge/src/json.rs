//! Reading JSON requests so that every refusal is the API's own JSON error naming what is
//! wrong: a wrong content type (415), a body over 64 KiB (413), malformed JSON (400), a
//! field the route does not take (`Invalid field: firstName`), or a value of the wrong
//! type (400, naming its path). And writing JSON responses ([`Json`]).

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::error::{ApiError, FieldError};

/// A JSON response body: axum's `Json`, but serialized into one buffer sized up front
/// (axum's writes through a `BytesMut` writer that starts at 128 bytes and regrows).
pub struct Json<T>(pub T);

/// What most single-resource answers fit in.
const RESPONSE_CAPACITY: usize = 1024;

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        json_response(&self.0)
    }
}

/// A JSON response body already written (a page of orders: `routes::order_page`).
pub struct JsonBytes(pub Vec<u8>);

impl IntoResponse for JsonBytes {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

fn json_response<T: Serialize>(value: &T) -> Response {
    let mut body = Vec::with_capacity(RESPONSE_CAPACITY);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => JsonBytes(body).into_response(),
        // Only a map with non-string keys can fail, and the edge sends none: a bug.
        Err(e) => {
            tracing::error!(error = %e, "a response could not be serialized");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                r#"{"status":"error","code":"INTERNAL","detail":"internal error","fields":[]}"#,
            )
                .into_response()
        }
    }
}

/// The largest request body the edge reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON request body of type `T`, or the API's error.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|e| body_error(&e))?;
        // Every body of the API is an object; serde would also fill a struct from an
        // array of its fields in order, which no client means.
        if bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'[')
        {
            return Err(ApiError::invalid(
                "the body must be a JSON object, not an array",
                Vec::new(),
            ));
        }
        parse(&bytes).map(JsonBody)
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024),
    )
    // The rest of the body stays unread, so this connection cannot carry another request;
    // saying so keeps clients from reusing it.
    .with_header("connection", "close")
}

fn body_error(err: &axum::Error) -> ApiError {
    // to_bytes fails with a length-limit error when the body outgrows the limit, or with
    // an I/O error when the client breaks off.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return too_large();
        }
        source = e.source();
    }
    ApiError::invalid("the request body could not be read", Vec::new())
}

fn is_json(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The one parameter of a route's path (`/users/{userId}`), as text; the service checks
/// its value. A path axum cannot decode (not UTF-8) is the API's JSON error naming the
/// parameter, not axum's plain-text one.
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParam(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let key = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key } => key.clone(),
                    ErrorKind::ParseErrorAtKey { key, .. } => key.clone(),
                    ErrorKind::DeserializeError { key, .. } => key.clone(),
                    _ => "path".to_owned(),
                };
                Err(ApiError::invalid_field(&key, "is not valid UTF-8 text"))
            }
            Err(other) => Err(ApiError::invalid(
                "the path could not be read",
                vec![FieldError {
                    field: "path".into(),
                    description: other.body_text(),
                }],
            )),
        }
    }
}

/// Parses JSON into `T`, turning serde's complaint into a field-level error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| shape_error(e.path().to_string(), e.inner()))?;
    // Trailing garbage after the value is malformed JSON too.
    deserializer.end().map_err(|e| {
        ApiError::invalid(
            format!("malformed JSON: {}", without_position(&e.to_string())),
            Vec::new(),
        )
    })?;
    Ok(value)
}

/// Parses a query string into `T` with the same error shapes as bodies.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        if let Some(field) = unknown_field(&message) {
            return ApiError::invalid(
                format!("Invalid field: {field}"),
                vec![FieldError {
                    field,
                    description: "is not a parameter of this route".into(),
                }],
            );
        }
        let field = if path == "." {
            "query".to_owned()
        } else {
            path
        };
        ApiError::invalid_field(&field, &describe(&message))
    })
}

fn shape_error(path: String, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = without_position(&err.to_string());
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::invalid(format!("malformed JSON: {message}"), Vec::new())
        }
        Category::Data => {
            if let Some(field) = unknown_field(&message) {
                // serde_path_to_error's path already ends with the unknown key.
                let full = if path == "." { field } else { path };
                return ApiError::invalid(
                    format!("Invalid field: {full}"),
                    vec![FieldError {
                        field: full,
                        description: "is not a field of this request".into(),
                    }],
                );
            }
            if let Some(field) = missing_field(&message) {
                let full = join(&path, &field);
                return ApiError::invalid_field(&full, "is required");
            }
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::invalid_field(&field, &describe(&message))
        }
    }
}

/// `unknown field `firstName`, expected …` → `firstName`.
fn unknown_field(message: &str) -> Option<String> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
}

/// `missing field `emails`` → `emails`.
fn missing_field(message: &str) -> Option<String> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
}

fn join(path: &str, field: &str) -> String {
    if path == "." || path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// serde's sentence, minus the position and the Rust type names a client cannot act on.
fn describe(message: &str) -> String {
    let message = without_position(message);
    message
        .replace("expected i64", "expected a whole number")
        .replace("expected i32", "expected a whole number")
        .replace("expected u32", "expected a whole number from 0")
        .replace("expected u8", "expected a whole number from 0 to 255")
        .replace("a sequence", "an array")
}

fn without_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A whole number as JSON Schema counts them: `2` or `2.0` (an integer-valued number),
/// that fits `T`. serde alone refuses `2.0`.
pub fn whole_number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let raw: Box<RawValue> = Deserialize::deserialize(d)?;
    let text = raw.get();
    let n = match text.parse::<i64>() {
        Ok(n) => n,
        // i64::MAX as f64 rounds up to 2^63, which does not fit: compare strictly below.
        Err(_) => match text.parse::<f64>() {
            Ok(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => f as i64,
            _ => {
                return Err(D::Error::custom(format!(
                    "expected a whole number, got {text}"
                )));
            }
        },
    };
    T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range")))
}

/// A key that is present must hold a value: `"emails": null` is refused rather than
/// read as "no change". (With `#[serde(default)]`, an absent key is `None`.)
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Body {
        #[allow(dead_code)]
        emails: Vec<String>,
        #[allow(dead_code)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        quantity: i64,
    }

    fn fields(err: &ApiError) -> Vec<String> {
        err.fields.iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn each_kind_of_bad_body_is_named() {
        let err = parse::<Body>(br#"{"emails":[],"firstName":"x"}"#).unwrap_err();
        assert_eq!(err.detail, "Invalid field: firstName");
        assert_eq!(fields(&err), ["firstName"]);

        let err = parse::<Body>(br#"{"emails":[],"inner":{"quantity":1,"x":2}}"#).unwrap_err();
        assert_eq!(fields(&err), ["inner.x"]);

        let err = parse::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(
            (fields(&err), err.fields[0].description.as_str()),
            (vec!["emails".to_string()], "is required")
        );

        let err = parse::<Body>(br#"{"emails":"a@b.co"}"#).unwrap_err();
        assert_eq!(fields(&err), ["emails"]);

        let err = parse::<Body>(br#"{"emails":[], "inner":{"quantity":1.5}}"#).unwrap_err();
        assert_eq!(fields(&err), ["inner.quantity"]);
        assert!(
            err.fields[0].description.contains("whole number"),
            "{err:?}"
        );

        let err = parse::<Body>(br#"{"emails":[1]}"#).unwrap_err();
        assert_eq!(fields(&err), ["emails[0]"]);

        for malformed in [&b"{"[..], b"nope", br#"{"emails":[]} {}"#, b"\xff\xfe"] {
            let err = parse::<Body>(malformed).unwrap_err();
            assert!(err.detail.starts_with("malformed JSON"), "{err:?}");
            assert_eq!(err.http, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn json_content_types_are_recognised() {
        let v = |s: &'static str| Some(axum::http::HeaderValue::from_static(s));
        assert!(is_json(v("application/json").as_ref()));
        assert!(is_json(v("Application/JSON; charset=utf-8").as_ref()));
        assert!(!is_json(v("text/plain").as_ref()));
        assert!(!is_json(None));
    }
}
