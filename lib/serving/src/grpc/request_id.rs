//! The request id in gRPC metadata: read by servers, set by clients.

use tandem::REQUEST_ID;

/// The request id a caller sent in metadata, if it is printable.
pub fn request_id<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Wraps a message for a call that carries `request_id` in its metadata.
pub fn request_with_id<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = request_id.parse() {
        request.metadata_mut().insert(REQUEST_ID, value);
    }
    request
}
