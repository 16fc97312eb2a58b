use tandem::domain::EmailCheck;

/// Which behavior a user-svc process has. Both flavors serve the same API over the same
/// data; the edge moves traffic from v1 to v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Flavor {
    /// Legacy: no timestamps, no email syntax check.
    V1,
    /// Stamps createdAt/updatedAt and refuses invalid email addresses.
    V2,
}

impl Flavor {
    pub fn email_check(self) -> EmailCheck {
        match self {
            Flavor::V1 => EmailCheck::Lenient,
            Flavor::V2 => EmailCheck::Syntax,
        }
    }

    pub fn stamps_changes(self) -> bool {
        self == Flavor::V2
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::V1 => "v1",
            Flavor::V2 => "v2",
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
