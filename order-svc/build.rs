//! order-svc's own gRPC server code: the OrderService of proto/, with every message the
//! `tandem` crate's but one, the list call's answer, which order-svc sends already encoded
//! (src/wire.rs). The bytes on the wire are a `ListOrdersResponse`, so every client (the
//! edge, grpcurl, stubs in other languages) is unaffected. Built with protox, no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(["tandem/order/v1/order_service.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("tandem::codec::SliceCodec")
        .extern_path(
            ".tandem.order.v1.ListOrdersResponse",
            "crate::wire::EncodedListOrdersResponse",
        )
        .extern_path(".tandem", "::tandem::proto")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
