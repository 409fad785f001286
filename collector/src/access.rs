//! Who is asking, and what they may see: the console's roles and network scopes.
//!
//! A [`Viewer`] is resolved from a console session or a subscriber token for every `/api/`
//! request; every view, API, export and live stream limits itself with
//! [`Viewer::scope`] and checks changes with [`Viewer::can_triage`].

use std::net::IpAddr;

use ipnet::IpNet;

/// A console role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, users included.
    Admin,
    /// Reads and triages.
    Analyst,
    /// Reads only.
    Viewer,
}

impl Role {
    /// The role's name as written in commands and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "analyst" => Ok(Role::Analyst),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("role {other:?}: use admin, analyst or viewer")),
        }
    }
}

/// The addresses a user may see: every address, or those inside any of a list of networks.
/// An event is visible when its source or its destination is inside the scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Empty means unrestricted.
    nets: Vec<IpNet>,
}

impl Scope {
    /// No restriction.
    pub fn all() -> Self {
        Scope { nets: Vec::new() }
    }

    /// Limited to these networks (an empty list means no restriction).
    pub fn nets(nets: Vec<IpNet>) -> Self {
        Scope { nets }
    }

    /// Parses `CIDR,CIDR,...` (a bare address is a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(n) => n.trunc(),
                Err(_) => match part.parse::<IpAddr>() {
                    Ok(a) => IpNet::from(a),
                    Err(_) => return Err(format!("scope {part:?} is not a CIDR or an address")),
                },
            };
            nets.push(net);
        }
        Ok(Scope { nets })
    }

    /// Whether this scope has no restriction.
    pub fn is_all(&self) -> bool {
        self.nets.is_empty()
    }

    /// The networks (empty when unrestricted).
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether an address is inside the scope.
    pub fn allows(&self, ip: &IpAddr) -> bool {
        self.nets.is_empty() || self.nets.iter().any(|n| n.contains(ip))
    }

    /// Whether an event between these addresses is visible (either end inside).
    pub fn allows_pair(&self, src: Option<IpAddr>, dst: Option<IpAddr>) -> bool {
        self.is_all()
            || src.is_some_and(|a| self.allows(&a))
            || dst.is_some_and(|a| self.allows(&a))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.nets.is_empty() {
            return f.write_str("all");
        }
        let parts: Vec<String> = self.nets.iter().map(|n| n.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// The person (or token) behind a console or API request.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The user name; `token:subscriber` for a subscriber token.
    pub name: String,
    /// The role.
    pub role: Role,
    /// What the viewer may see.
    pub scope: Scope,
}

impl Viewer {
    /// Whether the viewer may change triage (status, assignee, tags, notes).
    pub fn can_triage(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Analyst)
    }

    /// Whether the viewer may manage users and see the audit log.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let s = Scope::parse("198.18.0.0/24, 2001:db8::/32,198.19.1.1").unwrap();
        assert!(s.allows(&"198.18.0.7".parse().unwrap()));
        assert!(s.allows(&"198.19.1.1".parse().unwrap()));
        assert!(!s.allows(&"198.19.1.2".parse().unwrap()));
        assert!(s.allows(&"2001:db8::1".parse().unwrap()));
        assert!(!s.allows(&"2001:db9::1".parse().unwrap()));
        assert!(Scope::parse("").unwrap().is_all());
        assert!(Scope::parse("nope").is_err());
        assert!(s.allows_pair(
            Some("10.0.0.1".parse().unwrap()),
            Some("198.18.0.1".parse().unwrap())
        ));
    }
}
