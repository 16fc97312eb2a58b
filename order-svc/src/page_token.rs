//! Opaque page tokens: where the next page starts, bound to the filters of the listing
//! that made it, so a token cannot be replayed against another listing by mistake.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use tandem::domain::{OrderId, OrderStatus, UserId};

use crate::model::{ListFilter, PageCursor};

#[derive(Serialize, Deserialize)]
struct Token {
    /// created_at of the last order of the previous page, ms since the epoch.
    t: i64,
    /// order_id of that order.
    o: String,
    /// The filters the listing had.
    s: Option<String>,
    u: Option<String>,
}

pub fn encode(cursor: PageCursor, filter: ListFilter) -> String {
    let token = Token {
        t: cursor.created_at.timestamp_millis(),
        o: cursor.order_id.to_string(),
        s: filter.status.map(|s| s.as_str().to_owned()),
        u: filter.user_id.map(|u| u.to_string()),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("a token always serializes"))
}

/// The cursor in `raw`, if it is a token this service made for the same filters.
pub fn decode(raw: &str, filter: ListFilter) -> Result<PageCursor, String> {
    const NOT_OURS: &str = "is not a page token of this listing";
    let bytes = URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| NOT_OURS.to_owned())?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| NOT_OURS.to_owned())?;
    let same_filters = token.s.as_deref().map(OrderStatus::from_str_opt) == filter.status.map(Some)
        && token.u.as_deref().map(|u| UserId::parse(u).ok()) == filter.user_id.map(Some);
    if !same_filters {
        return Err("belongs to a listing with other filters; start again without it".into());
    }
    Ok(PageCursor {
        created_at: DateTime::from_timestamp_millis(token.t).ok_or_else(|| NOT_OURS.to_owned())?,
        order_id: OrderId::parse(&token.o).map_err(|_| NOT_OURS.to_owned())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_with_their_filters() {
        let cursor = PageCursor {
            created_at: DateTime::from_timestamp_millis(1_764_000_000_123).unwrap(),
            order_id: OrderId::new_random(),
        };
        let shipping = ListFilter {
            status: Some(OrderStatus::Shipping),
            user_id: None,
        };
        let token = encode(cursor, shipping);
        assert_eq!(decode(&token, shipping), Ok(cursor));
        assert!(decode(&token, ListFilter::default()).is_err());
        assert!(decode("garbage!", shipping).is_err());
        assert!(decode("", shipping).is_err());
    }
}
