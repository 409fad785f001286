//! The sensor's event ([`xtrail_detect::event::Event`]) to and from the wire event
//! ([`crate::v1::Event`]).
//!
//! Sensor to wire is total. Wire to sensor can fail: the wire carries text that a peer may
//! have filled with anything (a bad address, a type the sensor does not know such as
//! `SPOOL_DROP`), and says so with a [`ConvertError`].

use std::net::IpAddr;

use thiserror::Error;
use xtrail_detect::event::{Action, Details, Event, EventType, Severity};

use crate::v1;

/// Why a wire event is not a valid sensor event.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConvertError {
    /// An address field is not an IPv4 or IPv6 address.
    #[error("{field} is not an IP address: {value:?}")]
    BadAddress {
        /// `src_ip` or `dst_ip`.
        field: &'static str,
        /// The offending text.
        value: String,
    },
    /// A port field is above 65535.
    #[error("{field} is out of range: {value}")]
    BadPort {
        /// `src_port` or `dst_port`.
        field: &'static str,
        /// The offending value.
        value: u32,
    },
    /// The event type is not one the sensor produces.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// Severity or action is unspecified or unknown.
    #[error("{field} is unspecified or unknown: {value}")]
    BadEnum {
        /// `severity` or `action`.
        field: &'static str,
        /// The raw enum value.
        value: i32,
    },
}

/// Parses an event type name (`DNS`, `IPORT`, ...), case-insensitively.
pub fn parse_event_type(name: &str) -> Option<EventType> {
    EventType::ALL
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(name))
}

impl From<Severity> for v1::Severity {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Low => v1::Severity::Low,
            Severity::Medium => v1::Severity::Medium,
            Severity::High => v1::Severity::High,
        }
    }
}

impl From<Action> for v1::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::Pass => v1::Action::Pass,
            Action::Drop => v1::Action::Drop,
        }
    }
}

impl From<&Event> for v1::Event {
    /// The wire form of a sensor event; `seq`, `sensor_id` and `cursor` are left 0/empty for
    /// the publisher and the collector to fill.
    fn from(e: &Event) -> Self {
        let d = &e.details;
        let dns = (d.dns_query.is_some() || d.dns_qtype.is_some()).then(|| v1::DnsDetails {
            query: d.dns_query.clone(),
            qtype: d.dns_qtype.clone(),
        });
        let http = (d.http_method.is_some()
            || d.http_host.is_some()
            || d.http_path.is_some()
            || d.http_user_agent.is_some())
        .then(|| v1::HttpDetails {
            method: d.http_method.clone(),
            host: d.http_host.clone(),
            path: d.http_path.clone(),
            user_agent: d.http_user_agent.clone(),
        });
        let tls = d.tls_sni.is_some().then(|| v1::TlsDetails {
            sni: d.tls_sni.clone(),
        });
        v1::Event {
            ts_us: e.ts_us,
            sensor: e.sensor.clone(),
            src_ip: e.src_ip.to_string(),
            src_port: u32::from(e.src_port),
            dst_ip: e.dst_ip.to_string(),
            dst_port: u32::from(e.dst_port),
            proto: e.proto.clone(),
            r#type: e.kind.as_str().to_string(),
            trail: e.trail.clone(),
            info: e.info.clone(),
            reference: e.reference.clone(),
            severity: v1::Severity::from(e.severity) as i32,
            action: v1::Action::from(e.action) as i32,
            iface: e.iface.clone(),
            dns,
            http,
            tls,
            seq: 0,
            sensor_id: String::new(),
            cursor: 0,
            trail_set_version: e.trail_set_version.clone(),
        }
    }
}

impl From<Event> for v1::Event {
    fn from(e: Event) -> Self {
        v1::Event::from(&e)
    }
}

fn ip(field: &'static str, value: &str) -> Result<IpAddr, ConvertError> {
    value.parse().map_err(|_| ConvertError::BadAddress {
        field,
        value: value.to_string(),
    })
}

fn port(field: &'static str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value).map_err(|_| ConvertError::BadPort { field, value })
}

impl TryFrom<&v1::Event> for Event {
    type Error = ConvertError;

    fn try_from(e: &v1::Event) -> Result<Self, Self::Error> {
        let severity = match v1::Severity::try_from(e.severity) {
            Ok(v1::Severity::Low) => Severity::Low,
            Ok(v1::Severity::Medium) => Severity::Medium,
            Ok(v1::Severity::High) => Severity::High,
            _ => {
                return Err(ConvertError::BadEnum {
                    field: "severity",
                    value: e.severity,
                })
            }
        };
        let action = match v1::Action::try_from(e.action) {
            Ok(v1::Action::Pass) => Action::Pass,
            Ok(v1::Action::Drop) => Action::Drop,
            _ => {
                return Err(ConvertError::BadEnum {
                    field: "action",
                    value: e.action,
                })
            }
        };
        let dns = e.dns.clone().unwrap_or_default();
        let http = e.http.clone().unwrap_or_default();
        let tls = e.tls.clone().unwrap_or_default();
        Ok(Event {
            ts_us: e.ts_us,
            sensor: e.sensor.clone(),
            src_ip: ip("src_ip", &e.src_ip)?,
            src_port: port("src_port", e.src_port)?,
            dst_ip: ip("dst_ip", &e.dst_ip)?,
            dst_port: port("dst_port", e.dst_port)?,
            proto: e.proto.clone(),
            kind: parse_event_type(&e.r#type)
                .ok_or_else(|| ConvertError::UnknownType(e.r#type.clone()))?,
            trail: e.trail.clone(),
            info: e.info.clone(),
            reference: e.reference.clone(),
            severity,
            action,
            iface: e.iface.clone(),
            trail_set_version: e.trail_set_version.clone(),
            details: Details {
                dns_query: dns.query,
                dns_qtype: dns.qtype,
                http_method: http.method,
                http_host: http.host,
                http_path: http.path,
                http_user_agent: http.user_agent,
                tls_sni: tls.sni,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            ts_us: 1_786_094_062_117_034,
            sensor: "gw".into(),
            src_ip: "198.18.0.2".parse().unwrap(),
            src_port: 57809,
            dst_ip: "2001:db8::1".parse().unwrap(),
            dst_port: 443,
            proto: "TCP".into(),
            kind: EventType::Http,
            trail: "evil.example/x".into(),
            info: "asyncrat (malware)".into(),
            reference: "(static)".into(),
            severity: Severity::High,
            action: Action::Drop,
            iface: Some("eth0".into()),
            trail_set_version: String::new(),
            details: Details {
                dns_query: None,
                dns_qtype: Some("A".into()),
                http_method: Some("GET".into()),
                http_host: Some("evil.example".into()),
                http_path: Some("/x".into()),
                http_user_agent: Some("curl/8".into()),
                tls_sni: Some("evil.example".into()),
            },
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let e = sample();
        let wire = v1::Event::from(&e);
        assert_eq!(wire.r#type, "HTTP");
        assert_eq!(Event::try_from(&wire).unwrap(), e);
        let mut bare = sample();
        bare.iface = None;
        bare.details = Details::default();
        let wire = v1::Event::from(&bare);
        assert!(wire.dns.is_none() && wire.http.is_none() && wire.tls.is_none());
        assert_eq!(Event::try_from(&wire).unwrap(), bare);
    }

    #[test]
    fn bad_wire_events_are_refused() {
        let mut wire = v1::Event::from(&sample());
        wire.src_ip = "nope".into();
        assert!(matches!(
            Event::try_from(&wire),
            Err(ConvertError::BadAddress {
                field: "src_ip",
                ..
            })
        ));
        let mut wire = v1::Event::from(&sample());
        wire.dst_port = 70000;
        assert!(Event::try_from(&wire).is_err());
        let mut wire = v1::Event::from(&sample());
        wire.r#type = crate::SPOOL_DROP_TYPE.into();
        assert_eq!(
            Event::try_from(&wire),
            Err(ConvertError::UnknownType("SPOOL_DROP".into()))
        );
        let mut wire = v1::Event::from(&sample());
        wire.severity = 0;
        assert!(Event::try_from(&wire).is_err());
    }
}
