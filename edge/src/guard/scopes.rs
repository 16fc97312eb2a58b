//! The scopes tandem reads from a token, and which route needs which.

use axum::http::Method;

/// A set of tandem's scopes (others in the token are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const NONE: Scopes = Scopes(0);
    pub const USERS_READ: Scopes = Scopes(1);
    pub const USERS_WRITE: Scopes = Scopes(1 << 1);
    pub const ORDERS_READ: Scopes = Scopes(1 << 2);
    pub const ORDERS_WRITE: Scopes = Scopes(1 << 3);
    pub const ADMIN: Scopes = Scopes(1 << 4);

    const NAMES: [(Scopes, &'static str); 5] = [
        (Scopes::USERS_READ, "users:read"),
        (Scopes::USERS_WRITE, "users:write"),
        (Scopes::ORDERS_READ, "orders:read"),
        (Scopes::ORDERS_WRITE, "orders:write"),
        (Scopes::ADMIN, "tandem:admin"),
    ];

    pub fn parse<'a>(names: impl Iterator<Item = &'a str>) -> Scopes {
        names.fold(Scopes::NONE, |set, name| {
            match Self::NAMES.iter().find(|(_, n)| *n == name) {
                Some((scope, _)) => set.union(*scope),
                None => set,
            }
        })
    }

    pub const fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    pub const fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    /// Space-separated, as in a token (for metadata and the log).
    pub fn names(self) -> String {
        Self::NAMES
            .iter()
            .filter(|(scope, _)| self.contains(*scope))
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The name of a single scope.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(scope, _)| *scope == self)
            .map_or("", |(_, name)| name)
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Open to anyone: health checks and the API's documents.
    Nothing,
    /// A valid token with this scope.
    Scope(Scopes),
    /// The admin API checks its own credential (the admin token, or `tandem:admin`).
    Admin,
}

/// The table of the REST API's routes, by their matched path.
pub fn needs(method: &Method, route: Option<&str>) -> Needs {
    let write = !matches!(*method, Method::GET | Method::HEAD);
    match route {
        Some("/health") | None => Needs::Nothing,
        Some(r) if r.starts_with("/users") => Needs::Scope(if write {
            Scopes::USERS_WRITE
        } else {
            Scopes::USERS_READ
        }),
        Some(r) if r.starts_with("/orders") => Needs::Scope(if write {
            Scopes::ORDERS_WRITE
        } else {
            Scopes::ORDERS_READ
        }),
        // /metrics shows how the system is run: the operator's scope.
        Some("/metrics") => Needs::Scope(Scopes::ADMIN),
        Some(r) if r.starts_with("/admin") => Needs::Admin,
        // A route added without a line here needs the operator until it gets one.
        Some(_) => Needs::Scope(Scopes::ADMIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_from_a_token_and_ignore_the_rest() {
        let s = Scopes::parse("openid users:read orders:write profile".split(' '));
        assert!(s.contains(Scopes::USERS_READ) && s.contains(Scopes::ORDERS_WRITE));
        assert!(!s.contains(Scopes::USERS_WRITE) && !s.contains(Scopes::ADMIN));
        assert_eq!(s.names(), "users:read orders:write");
    }

    #[test]
    fn every_route_needs_its_scope() {
        use Needs::*;
        let table = [
            (Method::GET, "/users/{userId}", Scope(Scopes::USERS_READ)),
            (Method::PUT, "/users/{userId}", Scope(Scopes::USERS_WRITE)),
            (Method::POST, "/users", Scope(Scopes::USERS_WRITE)),
            (Method::GET, "/orders", Scope(Scopes::ORDERS_READ)),
            (Method::GET, "/orders/{orderId}", Scope(Scopes::ORDERS_READ)),
            (Method::POST, "/orders", Scope(Scopes::ORDERS_WRITE)),
            (
                Method::PUT,
                "/orders/{orderId}/status",
                Scope(Scopes::ORDERS_WRITE),
            ),
            (
                Method::PUT,
                "/orders/{orderId}/details",
                Scope(Scopes::ORDERS_WRITE),
            ),
            (Method::GET, "/health", Nothing),
            (Method::GET, "/metrics", Scope(Scopes::ADMIN)),
            (Method::PUT, "/admin/routing", Admin),
        ];
        for (method, route, expected) in table {
            assert_eq!(needs(&method, Some(route)), expected, "{method} {route}");
        }
    }
}
