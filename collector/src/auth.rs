//! Bearer-token authentication. Sensors and subscribers hold separate tokens: a sensor token
//! may publish (Ingest), a subscriber token may subscribe and query (Events, HTTP API).
//!
//! - no or malformed `authorization` metadata, or an unknown token: `UNAUTHENTICATED`;
//! - a valid token of the other role: `UNAUTHENTICATED` too, with a message naming its role;
//! - a role with no token configured is open (the collector warns at start).

use std::sync::Arc;

use tonic::Status;

use crate::metrics::{inc, Metrics};

/// Who may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Publishes events.
    Sensor,
    /// Subscribes to and queries events.
    Subscriber,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Sensor => "sensor",
            Role::Subscriber => "subscriber",
        }
    }
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    sensor: Arc<Vec<String>>,
    subscriber: Arc<Vec<String>>,
}

/// Compares without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Tokens {
    /// Tokens for each role.
    pub fn new(sensor: Vec<String>, subscriber: Vec<String>) -> Self {
        Tokens {
            sensor: Arc::new(sensor),
            subscriber: Arc::new(subscriber),
        }
    }

    /// Whether a role has no token (open).
    pub fn is_open(&self, role: Role) -> bool {
        self.of(role).is_empty()
    }

    fn of(&self, role: Role) -> &[String] {
        match role {
            Role::Sensor => &self.sensor,
            Role::Subscriber => &self.subscriber,
        }
    }

    /// Checks an `authorization` header value for a role.
    pub fn check(&self, role: Role, header: Option<&str>) -> Result<(), Status> {
        let allowed = self.of(role);
        if allowed.is_empty() {
            return Ok(());
        }
        let Some(header) = header else {
            return Err(Status::unauthenticated(format!(
                "missing `authorization: Bearer <{} token>` metadata",
                role.name()
            )));
        };
        let Some(token) = header.strip_prefix("Bearer ").map(str::trim) else {
            return Err(Status::unauthenticated(
                "authorization metadata must be `Bearer <token>`",
            ));
        };
        if allowed.iter().any(|t| same(t, token)) {
            return Ok(());
        }
        let other = match role {
            Role::Sensor => Role::Subscriber,
            Role::Subscriber => Role::Sensor,
        };
        // The contract: a token of the wrong role is a wrong token (UNAUTHENTICATED),
        // with a message that says which role it belongs to.
        if self.of(other).iter().any(|t| same(t, token)) {
            return Err(Status::unauthenticated(format!(
                "this is a {} token; this call needs a {} token",
                other.name(),
                role.name()
            )));
        }
        Err(Status::unauthenticated(format!(
            "unknown {} token",
            role.name()
        )))
    }

    /// A tonic interceptor for a role, counting refusals.
    pub fn interceptor(
        &self,
        role: Role,
        metrics: Arc<Metrics>,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
        let tokens = self.clone();
        move |req: tonic::Request<()>| {
            let header = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            match tokens.check(role, header) {
                Ok(()) => Ok(req),
                Err(status) => {
                    inc(&metrics.auth_failures);
                    Err(status)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn roles_are_separate() {
        let t = Tokens::new(vec!["s1".into()], vec!["u1".into()]);
        assert!(t.check(Role::Sensor, Some("Bearer s1")).is_ok());
        assert!(t.check(Role::Subscriber, Some("Bearer u1")).is_ok());
        assert_eq!(
            t.check(Role::Sensor, None).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            t.check(Role::Sensor, Some("Bearer nope"))
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        assert_eq!(
            t.check(Role::Sensor, Some("s1")).unwrap_err().code(),
            Code::Unauthenticated
        );
        let e = t.check(Role::Sensor, Some("Bearer u1")).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("subscriber token"));
        assert!(Tokens::default().check(Role::Sensor, None).is_ok());
    }
}
