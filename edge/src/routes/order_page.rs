//! The JSON of `GET /orders`, written straight from the bytes of order-svc's answer.
//!
//! The page is the edge's largest answer (50 orders of 3 items are 25 KB), and going
//! through serde (proto → [`OrderView`] → serde_json) cost 40 % of the edge's
//! instructions on it: serde_json escapes every string byte by byte, keys included, and
//! each field is a call through the serializer (callgrind, bench/FINDINGS.md §9). Here
//! the fixed parts of an order (keys, punctuation) are byte strings copied whole, and a
//! value is checked for anything JSON must escape eight bytes at a time; only a value
//! that holds such a character goes through serde_json's escaping. The answer itself is
//! not decoded into messages first ([`transcode`]): each order's fields are borrowed from
//! the gRPC frame and written out before the next order is read.
//!
//! The bytes are exactly those serde_json writes for [`OrdersEnvelope`] (the type the
//! OpenAPI document describes) from the message prost decodes; the tests hold the three
//! together, and order-svc's answer is checked the same way ([`OrderView`]'s conversion
//! and this share the checks).
//!
//! [`OrderView`]: super::orders::OrderView
//! [`OrdersEnvelope`]: super::orders::OrdersEnvelope

use std::fmt::Write as _;

use prost::Message as _;
use prost::bytes::Buf as _;
use prost::encoding::{DecodeContext, WireType, check_wire_type, decode_key, decode_varint};
use tandem::domain::OrderStatus;
use tandem::proto::order::v1 as pb;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::transport::Channel;
use tonic_prost::ProstEncoder;

use super::orders::{order_status, price};
use super::{SUCCESS, rfc3339};

/// JSON bytes an order of three items takes, about: the buffer is sized for the page.
const ORDER_BYTES: usize = 640;

/// Bytes of order-svc's answer tonic has room for before it grows its buffer: a page of
/// 50 orders of three items fits (its JSON, keys and all, is 26 KB).
const ANSWER_BUFFER_BYTES: usize = 64 * 1024;

/// `{"status":"success","orders":[…],"nextPageToken":…}` for `orders`, or what in
/// order-svc's answer is unusable (a price that is not one, an order without status).
pub fn write(orders: &[pb::Order], next_page_token: &str) -> Result<Vec<u8>, String> {
    let mut out = start(orders.len() * ORDER_BYTES);
    let mut fields = OrderFields::default();
    for (i, order) in orders.iter().enumerate() {
        fields.borrow(order);
        write_order(&mut out, i, &fields)?;
    }
    Ok(finish(out, next_page_token))
}

fn start(capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + capacity);
    out.extend_from_slice(br#"{"status":"#);
    string(&mut out, SUCCESS);
    out.extend_from_slice(br#","orders":["#);
    out
}

fn finish(mut out: Vec<u8>, next_page_token: &str) -> Vec<u8> {
    out.push(b']');
    if !next_page_token.is_empty() {
        out.extend_from_slice(br#","nextPageToken":"#);
        string(&mut out, next_page_token);
    }
    out.push(b'}');
    out
}

/// What the page's JSON shows of an order, borrowed from a `pb::Order` or straight from
/// the bytes of order-svc's answer. One is kept for a whole page and refilled for each
/// order, so its lists keep their room.
#[derive(Debug, Default)]
struct OrderFields<'a> {
    order_id: &'a str,
    user_id: &'a str,
    items: Vec<ItemFields<'a>>,
    emails: Vec<&'a str>,
    /// Street, city, province, postal code, country: `Address`'s fields 1–5.
    address: [&'a str; 5],
    status: i32,
    created_at: Option<prost_types::Timestamp>,
    updated_at: Option<prost_types::Timestamp>,
}

#[derive(Debug, Default)]
struct ItemFields<'a> {
    item_id: &'a str,
    quantity: i64,
    /// The `Decimal`'s text; empty when the item has none (refused as a price).
    price: &'a str,
}

impl<'a> OrderFields<'a> {
    fn clear(&mut self) {
        let mut items = std::mem::take(&mut self.items);
        let mut emails = std::mem::take(&mut self.emails);
        items.clear();
        emails.clear();
        *self = OrderFields {
            items,
            emails,
            ..OrderFields::default()
        };
    }

    fn borrow(&mut self, order: &'a pb::Order) {
        self.clear();
        self.order_id = &order.order_id;
        self.user_id = &order.user_id;
        self.items.extend(order.items.iter().map(|item| ItemFields {
            item_id: &item.item_id,
            quantity: item.quantity,
            price: item.price.as_ref().map_or("", |p| p.value.as_str()),
        }));
        self.emails.extend(order.emails.iter().map(String::as_str));
        if let Some(a) = &order.delivery_address {
            self.address = [&a.street, &a.city, &a.province, &a.postal_code, &a.country];
        }
        self.status = order.order_status;
        self.created_at = order.created_at;
        self.updated_at = order.updated_at;
    }
}

fn write_order(out: &mut Vec<u8>, index: usize, order: &OrderFields) -> Result<(), String> {
    // Checked first, so an unusable order leaves nothing half-written to report.
    let status: OrderStatus = order_status(order.status)?;
    if index > 0 {
        out.push(b',');
    }
    out.extend_from_slice(br#"{"orderId":"#);
    string(out, order.order_id);
    out.extend_from_slice(br#","userId":"#);
    string(out, order.user_id);
    out.extend_from_slice(br#","items":["#);
    for (i, item) in order.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"itemId":"#);
        string(out, item.item_id);
        out.extend_from_slice(br#","quantity":"#);
        out.extend_from_slice(itoa::Buffer::new().format(item.quantity).as_bytes());
        out.extend_from_slice(br#","price":"#);
        // Price's Display straight into the page: io::Write's `write!` on a Vec went
        // through an adapter and the formatter's padding (callgrind, §17).
        let _ = write!(VecText(out), "{}", price(item.price)?);
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"emails":["#);
    for (i, email) in order.emails.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, email);
    }
    let [street, city, province, postal_code, country] = order.address;
    out.extend_from_slice(br#"],"deliveryAddress":{"street":"#);
    string(out, street);
    out.extend_from_slice(br#","city":"#);
    string(out, city);
    out.extend_from_slice(br#","province":"#);
    string(out, province);
    out.extend_from_slice(br#","postalCode":"#);
    string(out, postal_code);
    out.extend_from_slice(br#","country":"#);
    string(out, country);
    out.extend_from_slice(br#"},"orderStatus":"#);
    string(out, status.as_str());
    out.extend_from_slice(br#","createdAt":"#);
    timestamp(out, order.created_at);
    out.extend_from_slice(br#","updatedAt":"#);
    timestamp(out, order.updated_at);
    out.push(b'}');
    Ok(())
}

/// A `Vec<u8>` as a `fmt::Write`: text written with `write!` goes straight in.
struct VecText<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecText<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// [`rfc3339`]'s text as a JSON string, its digits put in place: chrono's
/// `to_rfc3339_opts` formats into a new String through the formatter, and the page's
/// hundred timestamps took some 8 % of the edge's instructions on it (callgrind, §17).
/// Years outside 0–9999 and leap seconds, which chrono writes its own way, go through
/// chrono.
fn timestamp(out: &mut Vec<u8>, at: Option<prost_types::Timestamp>) {
    use chrono::{Datelike as _, Timelike as _};
    // The naive time, as every accessor of a `DateTime` adds its (zero) offset again.
    let time = at
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.naive_utc());
    let Some(time) =
        time.filter(|t| (0..=9999).contains(&t.year()) && t.nanosecond() < 1_000_000_000)
    else {
        string(out, &rfc3339(at).unwrap_or_default());
        return;
    };
    let mut text = *b"\"0000-00-00T00:00:00.000Z\"";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(1, 4, time.year() as u32);
    put(6, 2, time.month());
    put(9, 2, time.day());
    put(12, 2, time.hour());
    put(15, 2, time.minute());
    put(18, 2, time.second());
    put(21, 3, time.nanosecond() / 1_000_000);
    out.extend_from_slice(&text);
}

// === order-svc's answer, read straight into the page ===
//
// Decoded by prost, a page of 50 orders is some 800 strings, each allocated, copied,
// checked, written into the JSON and freed: a fifth of the edge's time on the list call
// (perf, bench/FINDINGS.md §17). Here the answer's bytes are walked once with prost's
// own wire primitives, each order's fields borrowed from the frame, and the order
// written out before the next is read. The reading follows protobuf's rules as prost's
// generated code does (fields in any order, unknown ones skipped, a repeated message
// field adding an element, a message field given twice merged, the last scalar winning,
// strings checked as UTF-8); the tests hold it to prost's decoding byte for byte.

/// The list call's answer, as the REST page.
#[derive(Debug)]
pub enum ListedPage {
    /// `GET /orders`' answer, ready to send.
    Json(Vec<u8>),
    /// What in order-svc's answer the edge cannot pass on (see [`write`]).
    Unusable(String),
}

/// Calls order-svc's ListOrders with [`PageCodec`]: the generated client's call, with
/// the answer read by [`transcode`].
pub async fn list_orders(
    channel: Channel,
    request: tonic::Request<pb::ListOrdersRequest>,
) -> Result<tonic::Response<ListedPage>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = request;
    request.extensions_mut().insert(tonic::GrpcMethod::new(
        "tandem.order.v1.OrderService",
        "ListOrders",
    ));
    let path = http::uri::PathAndQuery::from_static("/tandem.order.v1.OrderService/ListOrders");
    grpc.unary(request, path, PageCodec).await
}

/// ListOrders' codec for the edge: the request encoded by prost, the answer read into
/// the REST page.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageCodec;

impl Codec for PageCodec {
    type Encode = pb::ListOrdersRequest;
    type Decode = ListedPage;
    type Encoder = ProstEncoder<pb::ListOrdersRequest>;
    type Decoder = PageCodec;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        PageCodec
    }
}

impl Decoder for PageCodec {
    type Item = ListedPage;
    type Error = Status;

    /// Room for a whole page from the start: with tonic's 8 KiB the buffer grew (a copy
    /// of what it held) once or twice for every page as its frames came in.
    fn buffer_settings(&self) -> BufferSettings {
        // The yield threshold concerns encoding only; 32 KiB is tonic's default.
        BufferSettings::new(ANSWER_BUFFER_BYTES, 32 * 1024)
    }

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<ListedPage>, Status> {
        // The frame is contiguous: split off whole, nothing copied (as tandem's codec).
        let frame = buf.copy_to_bytes(buf.remaining());
        transcode(&frame)
            .map(Some)
            // What tonic's own prost decoder answers for a message it cannot read.
            .map_err(|Malformed(e)| Status::internal(e))
    }
}

/// An answer that is not a `ListOrdersResponse`: prost's reason, or the same words.
#[derive(Debug, PartialEq)]
pub struct Malformed(String);

impl From<prost::DecodeError> for Malformed {
    fn from(e: prost::DecodeError) -> Self {
        Malformed(e.to_string())
    }
}

/// Field numbers of proto/tandem/order/v1/order_service.proto and common/v1's.
mod field {
    pub const PAGE_ORDERS: u32 = 1;
    pub const PAGE_NEXT_PAGE_TOKEN: u32 = 2;
    pub const ORDER_ID: u32 = 1;
    pub const ORDER_USER_ID: u32 = 2;
    pub const ORDER_ITEMS: u32 = 3;
    pub const ORDER_EMAILS: u32 = 4;
    pub const ORDER_DELIVERY_ADDRESS: u32 = 5;
    pub const ORDER_STATUS: u32 = 6;
    pub const ORDER_CREATED_AT: u32 = 7;
    pub const ORDER_UPDATED_AT: u32 = 8;
    pub const ORDER_CONTACT_VERSION: u32 = 9;
    pub const ITEM_ID: u32 = 1;
    pub const ITEM_QUANTITY: u32 = 2;
    pub const ITEM_PRICE: u32 = 3;
    pub const DECIMAL_VALUE: u32 = 1;
}

/// The REST page for the bytes of a `ListOrdersResponse`: what [`write`] makes of the
/// message prost decodes from them, or why they are not one.
pub fn transcode(wire: &[u8]) -> Result<ListedPage, Malformed> {
    // The JSON is about one and a half times the protobuf (its keys); room for twice, so
    // the buffer is not grown (and copied) while it is written.
    let mut out = start(2 * wire.len());
    let mut order = OrderFields::default();
    let mut orders = 0;
    let mut next_page_token = "";
    // The first unusable order; the rest is still read, as a malformed answer wins.
    let mut unusable = None;
    each_field(wire, |tag, wire_type, wire| {
        match tag {
            field::PAGE_ORDERS => {
                order.clear();
                order.merge(delimited(wire_type, wire)?)?;
                if unusable.is_none()
                    && let Err(e) = write_order(&mut out, orders, &order)
                {
                    unusable = Some(e);
                }
                orders += 1;
            }
            field::PAGE_NEXT_PAGE_TOKEN => next_page_token = text(wire_type, wire)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(match unusable {
        Some(e) => ListedPage::Unusable(e),
        None => ListedPage::Json(finish(out, next_page_token)),
    })
}

/// Reads a message's fields in the order they come, as prost's generated `merge` does:
/// `read` takes a field it knows from the wire and says so; any other is skipped.
fn each_field<'a>(
    mut wire: &'a [u8],
    mut read: impl FnMut(u32, WireType, &mut &'a [u8]) -> Result<bool, Malformed>,
) -> Result<(), Malformed> {
    while !wire.is_empty() {
        let (tag, wire_type) = decode_key(&mut wire)?;
        if !read(tag, wire_type, &mut wire)? {
            prost::encoding::skip_field(wire_type, tag, &mut wire, DecodeContext::default())?;
        }
    }
    Ok(())
}

impl<'a> OrderFields<'a> {
    /// Reads an `Order`'s fields into these, as prost merges a message.
    fn merge(&mut self, wire: &'a [u8]) -> Result<(), Malformed> {
        let ctx = DecodeContext::default;
        each_field(wire, |tag, wire_type, wire| {
            match tag {
                field::ORDER_ID => self.order_id = text(wire_type, wire)?,
                field::ORDER_USER_ID => self.user_id = text(wire_type, wire)?,
                field::ORDER_ITEMS => {
                    let mut item = ItemFields::default();
                    item.merge(delimited(wire_type, wire)?)?;
                    self.items.push(item);
                }
                field::ORDER_EMAILS => self.emails.push(text(wire_type, wire)?),
                field::ORDER_DELIVERY_ADDRESS => {
                    // Fields 1–5: street, city, province, postal code, country.
                    each_field(delimited(wire_type, wire)?, |tag, wire_type, wire| {
                        if !(1..=5).contains(&tag) {
                            return Ok(false);
                        }
                        self.address[tag as usize - 1] = text(wire_type, wire)?;
                        Ok(true)
                    })?
                }
                field::ORDER_STATUS => {
                    prost::encoding::int32::merge(wire_type, &mut self.status, wire, ctx())?
                }
                field::ORDER_CREATED_AT | field::ORDER_UPDATED_AT => {
                    let at = if tag == field::ORDER_CREATED_AT {
                        &mut self.created_at
                    } else {
                        &mut self.updated_at
                    };
                    at.get_or_insert_default()
                        .merge(delimited(wire_type, wire)?)?;
                }
                field::ORDER_CONTACT_VERSION => {
                    // Not on the page, but read as prost reads it: a wrong wire type is an error.
                    prost::encoding::int64::merge(wire_type, &mut 0, wire, ctx())?
                }
                _ => return Ok(false),
            }
            Ok(true)
        })
    }
}

impl<'a> ItemFields<'a> {
    fn merge(&mut self, wire: &'a [u8]) -> Result<(), Malformed> {
        each_field(wire, |tag, wire_type, wire| {
            match tag {
                field::ITEM_ID => self.item_id = text(wire_type, wire)?,
                field::ITEM_QUANTITY => prost::encoding::int64::merge(
                    wire_type,
                    &mut self.quantity,
                    wire,
                    DecodeContext::default(),
                )?,
                field::ITEM_PRICE => {
                    each_field(delimited(wire_type, wire)?, |tag, wire_type, wire| {
                        if tag != field::DECIMAL_VALUE {
                            return Ok(false);
                        }
                        self.price = text(wire_type, wire)?;
                        Ok(true)
                    })?
                }
                _ => return Ok(false),
            }
            Ok(true)
        })
    }
}

/// A length-delimited field's bytes, borrowed.
fn delimited<'a>(wire_type: WireType, wire: &mut &'a [u8]) -> Result<&'a [u8], Malformed> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(wire)?;
    if len > wire.len() as u64 {
        return Err(Malformed("buffer underflow".to_owned()));
    }
    let (body, rest) = wire.split_at(len as usize);
    *wire = rest;
    Ok(body)
}

/// A string field, borrowed; UTF-8 is checked as prost checks it.
fn text<'a>(wire_type: WireType, wire: &mut &'a [u8]) -> Result<&'a str, Malformed> {
    std::str::from_utf8(delimited(wire_type, wire)?)
        .map_err(|_| Malformed("invalid string value: data is not UTF-8 encoded".to_owned()))
}

/// A JSON string: copied whole between quotes when nothing in it needs escaping (the
/// usual case: ids, timestamps, most names), else escaped by serde_json.
fn string(out: &mut Vec<u8>, value: &str) {
    if needs_escape(value.as_bytes()) {
        // serde_json's escaping, so the bytes are its own; a Vec cannot fail to take them.
        let _ = serde_json::to_writer(&mut *out, value);
    } else {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }
}

/// Whether a string holds a character JSON must escape: a control character, `"` or
/// `\`. Eight bytes at a time, the last word overlapping the one before: fewer
/// instructions on a page's short strings (ids of 36 bytes, names) than the byte fold the
/// compiler had vectorized (callgrind, §17).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether any byte of `word` is below `n` (≤ 128); exact for the word as a whole.
    let any_below = |word: u64, n: u8| word.wrapping_sub(ONES * n as u64) & !word & HIGHS != 0;
    let any_equal = |word: u64, b: u8| any_below(word ^ (ONES * b as u64), 1);
    let special =
        |word: u64| any_below(word, 0x20) | any_equal(word, b'"') | any_equal(word, b'\\');
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    // Whole words, then the last eight bytes (overlapping the last word read).
    (0..bytes.len() / 8).any(|n| special(word(n * 8))) || special(word(bytes.len() - 8))
}

#[cfg(test)]
mod tests {
    use super::super::orders::{OrderView, OrdersEnvelope};
    use super::*;
    use tandem::proto::common::v1::{Address, Decimal};

    fn order(n: u32, item_id: &str, street: &str, email: &str) -> pb::Order {
        pb::Order {
            order_id: format!("0190b3c4-0000-7000-8000-{n:012}"),
            user_id: "6e3e7c1a-3c77-4c2e-9d3e-2f9a4e6d1b20".into(),
            items: vec![
                pb::OrderItem {
                    item_id: item_id.into(),
                    quantity: 2,
                    price: Some(Decimal {
                        value: "29.99".into(),
                    }),
                },
                pb::OrderItem {
                    item_id: "lamp".into(),
                    quantity: 1_000_000,
                    price: Some(Decimal {
                        value: "0.50".into(),
                    }),
                },
            ],
            emails: vec![email.into(), "second@example.com".into()],
            delivery_address: Some(Address {
                street: street.into(),
                city: "Montréal".into(),
                province: "QC".into(),
                postal_code: "H2X 1Y4".into(),
                country: "CA".into(),
            }),
            order_status: pb::OrderStatus::Delivered as i32,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000,
            }),
            updated_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_360,
                nanos: 0,
            }),
            contact_version: 4,
        }
    }

    /// What serde_json writes for the documented shape.
    fn through_serde(orders: &[pb::Order], token: &str) -> Vec<u8> {
        let envelope = OrdersEnvelope {
            status: SUCCESS,
            orders: orders
                .iter()
                .cloned()
                .map(OrderView::try_from)
                .collect::<Result<_, _>>()
                .unwrap(),
            next_page_token: (!token.is_empty()).then(|| token.to_owned()),
        };
        serde_json::to_vec(&envelope).unwrap()
    }

    #[test]
    fn the_page_is_the_bytes_serde_writes() {
        let awkward = [
            ("plain", "1 Main St", "a@b.co"),
            ("quote\"d", "back\\slash", "tab\there@x.co"),
            ("newline\n", "ctrl \u{1} \u{1f}", "\u{7f}del@x.co"),
            ("ünïcødé ✓", "Straße 5 – 😀", "</script>@x.co"),
            ("", "", ""),
        ];
        let orders: Vec<pb::Order> = awkward
            .iter()
            .enumerate()
            .map(|(n, (item, street, email))| order(n as u32, item, street, email))
            .collect();
        for token in ["", "next/page+token=="] {
            for page in [&orders[..0], &orders[..1], &orders[..]] {
                let written = write(page, token).unwrap();
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    String::from_utf8(through_serde(page, token)).unwrap()
                );
            }
        }
        // A missing address and timestamps are written as serde writes their defaults.
        let mut bare = order(9, "x", "y", "z@x.co");
        bare.delivery_address = None;
        bare.created_at = None;
        let page = std::slice::from_ref(&bare);
        assert_eq!(write(page, "").unwrap(), through_serde(page, ""));
    }

    #[test]
    fn an_unusable_answer_is_refused_as_the_conversion_refuses_it() {
        let mut bad_price = order(1, "x", "y", "z@x.co");
        bad_price.items[0].price = Some(Decimal {
            value: "twelve".into(),
        });
        let mut no_status = order(2, "x", "y", "z@x.co");
        no_status.order_status = pb::OrderStatus::Unspecified as i32;
        let mut no_price = order(3, "x", "y", "z@x.co");
        no_price.items[1].price = None;
        for bad in [bad_price, no_status, no_price] {
            let written = write(std::slice::from_ref(&bad), "").unwrap_err();
            // Read from the wire, after a usable order, it is refused the same way.
            let page = [order(4, "x", "y", "z@x.co"), bad.clone()];
            let wire = pb::ListOrdersResponse {
                orders: page.to_vec(),
                next_page_token: String::new(),
            }
            .encode_to_vec();
            assert_eq!(transcoded(&wire), Some(Err(written.clone())));
            assert_eq!(written, OrderView::try_from(bad).unwrap_err());
        }
    }

    /// The answer's bytes as the edge reads them: what [`write`] makes of the message
    /// prost decodes from them, or `None` where prost refuses them.
    fn through_prost(wire: &[u8]) -> Option<Result<Vec<u8>, String>> {
        let answer = pb::ListOrdersResponse::decode(wire).ok()?;
        Some(write(&answer.orders, &answer.next_page_token))
    }

    fn transcoded(wire: &[u8]) -> Option<Result<Vec<u8>, String>> {
        match transcode(wire).ok()? {
            ListedPage::Json(json) => Some(Ok(json)),
            ListedPage::Unusable(cause) => Some(Err(cause)),
        }
    }

    fn awkward_orders() -> Vec<pb::Order> {
        let mut orders: Vec<pb::Order> = [
            ("plain", "1 Main St", "a@b.co"),
            ("quote\"d", "back\\slash", "tab\there@x.co"),
            ("ünïcødé ✓", "Straße 5 – 😀", "</script>@x.co"),
            ("", "", ""),
        ]
        .iter()
        .enumerate()
        .map(|(n, (item, street, email))| order(n as u32, item, street, email))
        .collect();
        let mut bare = order(9, "x", "y", "z@x.co");
        bare.delivery_address = None;
        bare.created_at = None;
        bare.items[1].quantity = -7;
        orders.push(bare);
        orders
    }

    /// A field of `tag` holding `bytes`, on the wire.
    fn delimited_field(tag: u32, bytes: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        prost::encoding::encode_key(tag, WireType::LengthDelimited, &mut wire);
        prost::encoding::encode_varint(bytes.len() as u64, &mut wire);
        wire.extend_from_slice(bytes);
        wire
    }

    fn varint_field(tag: u32, value: u64) -> Vec<u8> {
        let mut wire = Vec::new();
        prost::encoding::encode_key(tag, WireType::Varint, &mut wire);
        prost::encoding::encode_varint(value, &mut wire);
        wire
    }

    /// Fields no version of the message has, of every wire type.
    fn unknown_fields() -> Vec<u8> {
        let mut wire = varint_field(20, 300);
        wire.extend(delimited_field(21, b"\xff not text"));
        prost::encoding::encode_key(22, WireType::SixtyFourBit, &mut wire);
        wire.extend_from_slice(&[7; 8]);
        prost::encoding::encode_key(23, WireType::ThirtyTwoBit, &mut wire);
        wire.extend_from_slice(&[7; 4]);
        prost::encoding::encode_key(24, WireType::StartGroup, &mut wire);
        wire.extend(varint_field(1, 5));
        prost::encoding::encode_key(24, WireType::EndGroup, &mut wire);
        wire
    }

    #[test]
    fn answers_are_read_as_prost_decodes_them() {
        let orders = awkward_orders();
        for token in ["", "next/page+token=="] {
            for page in [&orders[..0], &orders[..1], &orders[..]] {
                let answer = pb::ListOrdersResponse {
                    orders: page.to_vec(),
                    next_page_token: token.into(),
                };
                let wire = answer.encode_to_vec();
                let read = transcoded(&wire).unwrap();
                assert_eq!(read, Ok(write(page, token).unwrap()));
                assert_eq!(read, Ok(through_serde(page, token)));
            }
        }
    }

    /// Fields in another order, given twice (the last wins, messages merge, repeated
    /// fields add up) and unknown ones, at every level, as another implementation of
    /// order-svc may send them.
    #[test]
    fn merged_reordered_and_unknown_fields_are_read_as_prost_reads_them() {
        let [first, second, ..] = &awkward_orders()[..] else {
            unreachable!()
        };
        let mut later = pb::Order {
            user_id: "later-user".into(),
            items: vec![pb::OrderItem {
                item_id: "later-item".into(),
                quantity: 0,
                price: Some(Decimal {
                    value: "1.5".into(),
                }),
            }],
            emails: vec!["later@x.co".into()],
            delivery_address: Some(Address {
                city: "Later City".into(),
                ..Address::default()
            }),
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 5_000_000,
            }),
            ..pb::Order::default()
        }
        .encode_to_vec();
        // Unknown fields inside the address, an item and a price, and the order itself.
        let mut address = Address {
            country: "ZZ".into(),
            ..Address::default()
        }
        .encode_to_vec();
        address.extend(unknown_fields());
        later.extend(delimited_field(5, &address));
        let mut price = unknown_fields();
        price.extend(delimited_field(1, b"2.25"));
        let mut item = unknown_fields();
        item.extend(delimited_field(3, &price));
        item.extend(delimited_field(1, b"unknown-laden"));
        later.extend(delimited_field(3, &item));
        later.extend(unknown_fields());
        later.extend(varint_field(6, pb::OrderStatus::Shipping as u64));

        let mut merged = first.encode_to_vec();
        merged.extend(&later);
        let mut wire = delimited_field(2, b"first token");
        wire.extend(delimited_field(1, &merged));
        wire.extend(unknown_fields());
        wire.extend(delimited_field(1, &second.encode_to_vec()));
        wire.extend(delimited_field(2, b"last token"));

        let expected = through_prost(&wire).unwrap();
        assert!(expected.is_ok(), "{expected:?}");
        assert_eq!(transcoded(&wire), Some(expected));
    }

    /// Every truncation of an answer and every byte of it changed: refused where prost
    /// refuses it, and otherwise the same page (or the same refusal of an unusable one).
    #[test]
    fn broken_answers_are_refused_as_prost_refuses_them() {
        let orders = awkward_orders();
        let mut wire = pb::ListOrdersResponse {
            orders: orders[..2].to_vec(),
            next_page_token: "t".into(),
        }
        .encode_to_vec();
        wire.extend(unknown_fields());
        let (mut refused, mut read) = (0, 0);
        let mut check = |wire: &[u8]| {
            let expected = through_prost(wire);
            match &expected {
                None => refused += 1,
                Some(_) => read += 1,
            }
            assert_eq!(transcoded(wire), expected, "{wire:?}");
        };
        for len in 0..wire.len() {
            check(&wire[..len]);
        }
        for at in 0..wire.len() {
            for value in [0x00, 0x01, 0x08, 0x0a, 0x12, 0x7f, 0x80, 0xc3, 0xff] {
                let mut changed = wire.clone();
                changed[at] = value;
                check(&changed);
            }
        }
        // Both kinds were met: the check is not vacuous either way.
        assert!(
            refused > 100 && read > 100,
            "{refused} refused, {read} read"
        );
    }

    #[test]
    fn every_character_json_escapes_is_found_wherever_it_is() {
        let naive = |bytes: &[u8]| bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        for len in 0..=20 {
            for filler in [
                b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xa2, 0xdc, 0xff,
            ] {
                let mut bytes = vec![filler; len];
                assert_eq!(needs_escape(&bytes), naive(&bytes));
                for at in 0..len {
                    for b in 0..=255 {
                        bytes[at] = b;
                        assert_eq!(needs_escape(&bytes), naive(&bytes), "{bytes:?}");
                    }
                    bytes[at] = filler;
                }
            }
        }
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let check = |at: Option<prost_types::Timestamp>| {
            let mut written = Vec::new();
            timestamp(&mut written, at);
            let mut expected = Vec::new();
            string(&mut expected, &rfc3339(at).unwrap_or_default());
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(expected).unwrap(),
                "{at:?}"
            );
        };
        check(None);
        // Year 0 to 9999 and a little beyond either end.
        let (first, last) = (-62_167_219_200_i64, 253_402_300_799_i64);
        let edges = [
            first - 1,
            first,
            0,
            951_782_400,
            last,
            last + 1,
            i64::MIN,
            i64::MAX,
        ];
        let nanos = [
            0,
            -1,
            999_999,
            1_000_000,
            999_999_999,
            1_000_000_000,
            1_500_000_000,
            i32::MAX,
        ];
        for &seconds in &edges {
            for &nanos in &nanos {
                for shift in [-60, -1, 0, 59] {
                    let seconds = seconds.saturating_add(shift);
                    check(Some(prost_types::Timestamp { seconds, nanos }));
                }
            }
        }
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..100_000 {
            check(Some(prost_types::Timestamp {
                seconds: rng.i64(first - 86_400..last + 86_400),
                nanos: rng.i32(-10..1_000_000_010),
            }));
        }
    }
}
