//! Compiles proto/ into Rust with protox (a pure-Rust protobuf compiler), so building
//! tandem needs no `protoc`. The descriptor set is written to OUT_DIR for gRPC reflection.
use prost::Message;

const PROTOS: &[&str] = &[
    "proto/tandem/common/v1/common.proto",
    "proto/tandem/user/v1/user_service.proto",
    "proto/tandem/order/v1/order_service.proto",
    "proto/tandem/events/v1/user_events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("tandem_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Prost's codec, decoding each message from one contiguous slice (src/codec.rs).
        .codec_path("crate::codec::SliceCodec")
        // The JSON form of an address (REST bodies and answers, the user.updated event) is
        // the proto3 JSON mapping of the message itself, so there is one address type on
        // the wire. Unknown fields are refused, as proto3 JSON parsers do by default;
        // `state` is what older REST clients send for `province`.
        .type_attribute(
            ".tandem.common.v1.Address",
            "#[derive(serde::Serialize, serde::Deserialize)] \
             #[serde(rename_all = \"camelCase\", deny_unknown_fields)]",
        )
        .field_attribute(
            ".tandem.common.v1.Address.province",
            "#[serde(alias = \"state\")]",
        )
        .compile_fds(descriptors)?;
    // compile_fds emits no rerun-if-changed lines of its own.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
