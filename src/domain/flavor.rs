use super::EmailCheck;

/// One of the two user-svc flavors behind the edge, over the same data: v1 is the legacy
/// behavior, v2 the new. The flavor is behavior, not API version: both serve
/// `tandem.user.v1.UserService`, and the edge moves traffic from one to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavor {
    /// Legacy: no timestamps, no email syntax check.
    V1,
    /// Stamps createdAt/updatedAt and refuses invalid email addresses.
    V2,
}

impl Flavor {
    pub const ALL: [Flavor; 2] = [Flavor::V1, Flavor::V2];

    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::V1 => "v1",
            Flavor::V2 => "v2",
        }
    }

    /// The name of the process that runs this flavor (`X-Served-By`, logs, AMQP app id).
    pub fn service_name(self) -> &'static str {
        match self {
            Flavor::V1 => "user-svc-v1",
            Flavor::V2 => "user-svc-v2",
        }
    }

    pub fn other(self) -> Flavor {
        match self {
            Flavor::V1 => Flavor::V2,
            Flavor::V2 => Flavor::V1,
        }
    }

    /// How strictly this flavor checks email addresses.
    pub fn email_check(self) -> EmailCheck {
        match self {
            Flavor::V1 => EmailCheck::Lenient,
            Flavor::V2 => EmailCheck::Syntax,
        }
    }

    /// Whether this flavor stamps `createdAt` and `updatedAt`.
    pub fn stamps_changes(self) -> bool {
        self == Flavor::V2
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `v1` or `v2`, in any letter case, with surrounding space ignored.
impl std::str::FromStr for Flavor {
    type Err = String;

    fn from_str(raw: &str) -> Result<Flavor, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "v1" => Ok(Flavor::V1),
            "v2" => Ok(Flavor::V2),
            _ => Err(format!("{raw:?} is not a flavor: use v1 or v2")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_parse_and_name_themselves() {
        assert_eq!(" V2 ".parse::<Flavor>(), Ok(Flavor::V2));
        assert!("v3".parse::<Flavor>().is_err());
        for f in Flavor::ALL {
            assert_eq!(f.as_str().parse::<Flavor>(), Ok(f));
            assert_eq!(f.other().other(), f);
            assert!(f.service_name().ends_with(f.as_str()));
        }
    }
}
