//! The gRPC codec of every tandem service and client (build.rs names it): prost's, except
//! that each message is decoded from one contiguous slice.
//!
//! tonic hands a decoder its frame as a `DecodeBuf`, a window on the connection's
//! `BytesMut`, and prost reading field by field through that `Buf` paid a bounds-checked
//! `advance` on it for every varint byte and string: 25 % of the edge's instructions on a
//! page of 50 orders (callgrind, bench/FINDINGS.md §9). The frame is contiguous already,
//! so splitting it off as `Bytes` copies nothing, and prost decodes a `&[u8]` with plain
//! pointer arithmetic. Encoding is prost's own.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// `tonic_prost::ProstCodec` with [`SliceDecoder`] for decoding.
#[derive(Debug, Clone)]
pub struct SliceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Decodes a `U` from its frame taken whole.
#[derive(Debug, Clone)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let frame = buf.copy_to_bytes(buf.remaining());
        U::decode(frame.as_ref())
            .map(Some)
            // What tonic's own prost decoder answers for a message it cannot read.
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v1::Address;

    /// A message survives the trip through tonic's framing with this codec, and a frame
    /// that is not the message is refused, not half-read.
    #[tokio::test]
    async fn messages_decode_from_their_frame() {
        use tonic::codec::Streaming;
        let address = Address {
            street: "1 Rue de l'Église".into(),
            city: "Montréal".into(),
            province: "QC".into(),
            postal_code: "H2X 1Y4".into(),
            country: "CA".into(),
        };
        let frame = |payload: Vec<u8>| {
            let mut body = vec![0u8];
            body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            body.extend_from_slice(&payload);
            body
        };
        let mut bytes = frame(address.encode_to_vec());
        // Field 1 says 200 bytes of string follow, and 1 does.
        bytes.extend(frame(vec![0x0a, 200, 1, b'x']));
        let body = http_body_util::Full::new(prost::bytes::Bytes::from(bytes));
        let mut stream = Streaming::new_request(
            SliceCodec::<Address, Address>::default().decoder(),
            body,
            None,
            None,
        );
        assert_eq!(stream.message().await.unwrap(), Some(address));
        let err = stream.message().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    }
}
