use crate::proto::order::v1::OrderStatus as PbStatus;

/// Where an order is. It only ever moves forward: under process → shipping → delivered.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OrderStatus {
    #[serde(rename = "under process")]
    UnderProcess,
    #[serde(rename = "shipping")]
    Shipping,
    #[serde(rename = "delivered")]
    Delivered,
}

/// What setting a status would do to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// The order already has it: nothing changes.
    Same,
    Forward,
    /// Not allowed: history does not run backwards.
    Backward,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 3] = [Self::UnderProcess, Self::Shipping, Self::Delivered];

    /// The words the REST API and the stores use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnderProcess => "under process",
            Self::Shipping => "shipping",
            Self::Delivered => "delivered",
        }
    }

    pub fn from_str_opt(raw: &str) -> Option<OrderStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// `Ok(None)` for ORDER_STATUS_UNSPECIFIED, an error for a number the enum lacks.
    pub fn from_proto(raw: i32) -> Result<Option<OrderStatus>, String> {
        match PbStatus::try_from(raw) {
            Ok(PbStatus::Unspecified) => Ok(None),
            Ok(PbStatus::UnderProcess) => Ok(Some(Self::UnderProcess)),
            Ok(PbStatus::Shipping) => Ok(Some(Self::Shipping)),
            Ok(PbStatus::Delivered) => Ok(Some(Self::Delivered)),
            Err(_) => Err(format!("{raw} is not an OrderStatus value")),
        }
    }

    pub fn to_proto(self) -> PbStatus {
        match self {
            Self::UnderProcess => PbStatus::UnderProcess,
            Self::Shipping => PbStatus::Shipping,
            Self::Delivered => PbStatus::Delivered,
        }
    }

    pub fn change_to(self, next: OrderStatus) -> StatusChange {
        match self.cmp(&next) {
            std::cmp::Ordering::Equal => StatusChange::Same,
            std::cmp::Ordering::Less => StatusChange::Forward,
            std::cmp::Ordering::Greater => StatusChange::Backward,
        }
    }

    /// Once an order ships, its delivery address is history and no longer changes.
    pub fn address_is_history(self) -> bool {
        self != Self::UnderProcess
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_moves_forward_only() {
        use OrderStatus::*;
        assert_eq!(UnderProcess.change_to(Shipping), StatusChange::Forward);
        assert_eq!(UnderProcess.change_to(Delivered), StatusChange::Forward);
        assert_eq!(Shipping.change_to(Shipping), StatusChange::Same);
        assert_eq!(Delivered.change_to(Shipping), StatusChange::Backward);
        assert_eq!(Shipping.change_to(UnderProcess), StatusChange::Backward);
    }

    #[test]
    fn words_and_numbers_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::from_str_opt(s.as_str()), Some(s));
            assert_eq!(OrderStatus::from_proto(s.to_proto() as i32), Ok(Some(s)));
        }
        assert_eq!(OrderStatus::from_proto(0), Ok(None));
        assert!(OrderStatus::from_proto(9).is_err());
        assert_eq!(OrderStatus::from_str_opt("Shipping"), None);
        for s in OrderStatus::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }
}
