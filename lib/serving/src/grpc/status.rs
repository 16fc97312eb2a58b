//! Statuses that name the fields at fault, as `google.rpc.BadRequest` details, so a client
//! (the edge included) can say which field was wrong.

use tandem::domain::{FieldViolation, Violations};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT carrying each violation as a `google.rpc.BadRequest` field violation.
pub fn invalid_argument(violations: Violations) -> Status {
    let message = format!("invalid request: {violations}");
    let details: Vec<tonic_types::FieldViolation> = violations
        .into_vec()
        .into_iter()
        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(details),
    )
}

/// A status with one field violation, for codes other than INVALID_ARGUMENT
/// (ALREADY_EXISTS on a taken email, FAILED_PRECONDITION on a shipped address).
pub fn status_with_field(code: Code, field: &str, description: &str) -> Status {
    Status::with_error_details(
        code,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The field violations a status carries, if any.
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_error_details()
        .bad_request()
        .map(|br| {
            br.field_violations
                .iter()
                .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_travel_in_bad_request_details() {
        let mut v = Violations::new();
        v.add("emails[0]", "is not a valid email address");
        let status = invalid_argument(v);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            field_violations(&status),
            [FieldViolation::new(
                "emails[0]",
                "is not a valid email address"
            )]
        );
    }
}
