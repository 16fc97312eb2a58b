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
