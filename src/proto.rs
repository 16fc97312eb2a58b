//! Code generated from proto/ by build.rs, and the descriptor set gRPC reflection serves.

pub mod common {
    pub mod v1 {
        tonic::include_proto!("tandem.common.v1");
    }
}

pub mod user {
    pub mod v1 {
        tonic::include_proto!("tandem.user.v1");
    }
}

pub mod order {
    pub mod v1 {
        tonic::include_proto!("tandem.order.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("tandem.events.v1");
    }
}

/// Every tandem message and service, encoded as a `FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tandem_descriptor");

/// A protobuf timestamp for a UTC instant.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // Always below 1e9, so it fits.
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// The OpenAPI schema of an address: what [`crate::domain::Address::parse`] accepts.
#[cfg(feature = "openapi")]
mod address_schema {
    use super::common::v1::Address;
    use crate::domain::text_schema;

    impl utoipa::PartialSchema for Address {
        fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
            let parts = [
                ("street", "456 Elm Avenue"),
                ("city", "Ottawa"),
                ("province", "ON"),
                ("postalCode", "K2P 1L4"),
                ("country", "Canada"),
            ];
            let mut object = utoipa::openapi::ObjectBuilder::new().description(Some(
                "A delivery address. `state` is accepted for `province` (older clients send it).",
            ));
            for (name, example) in parts {
                object = object
                    .property(name, text_schema(true, example))
                    .required(name);
            }
            object
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ))
                .into()
        }
    }

    impl utoipa::ToSchema for Address {}
}
