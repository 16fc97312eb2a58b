use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random id (UUID v4).
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            pub fn parse(raw: &str) -> Result<Self, String> {
                if raw.is_empty() {
                    return Err("is required".into());
                }
                Uuid::try_parse(raw)
                    .map(Self)
                    .map_err(|_| "must be a UUID such as 8eab397f-6890-4c61-b3f8-4f6c099e4c90".into())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // Always the lowercase hyphenated form, whatever the client sent.
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies a user; made by user-svc.
    UserId
);
uuid_id!(
    /// Identifies an order; made by order-svc.
    OrderId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_in_canonical_form() {
        let id = UserId::parse("8EAB397F-6890-4C61-B3F8-4F6C099E4C90").unwrap();
        assert_eq!(id.to_string(), "8eab397f-6890-4c61-b3f8-4f6c099e4c90");
        assert!(OrderId::parse("nope").is_err());
        assert!(OrderId::parse("").is_err());
    }
}
