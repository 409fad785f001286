//! Maltrail interop: each event as a UDP datagram to a Maltrail server's UDP collector
//! (its sensors' `LOG_SERVER`), `<epoch seconds> <event line>\n`, the line exactly as the
//! sensor's `--format maltrail` writes it:
//!
//! ```text
//! 1786094062 "2026-08-07 09:14:22.117034" gw1 198.18.0.7 41234 198.19.0.1 53 UDP DNS evil.example "asyncrat (malware)" (static)
//! ```
//!
//! The server appends the line to that day's log (`LOG_DIR/YYYY-MM-DD.log`), so its web UI
//! shows the fleet's events. Times are UTC (as the sensor writes them). UDP: no
//! acknowledgement; a batch counts as sent when the kernel took its datagrams.

use anyhow::{bail, Context as _};
use tokio::net::UdpSocket;
use xtrail_detect::event::{push_maltrail_ts, push_maltrail_value};
use xtrail_proto::v1;

use super::syslog::split_host;
use super::{ExporterFile, ExporterStats, Sink, SinkError};

/// A checked Maltrail exporter.
#[derive(Clone, Debug)]
pub struct MaltrailConfig {
    /// The server's UDP `HOST:PORT`.
    pub address: String,
}

impl MaltrailConfig {
    /// Checks the options of a table.
    pub fn check(t: &ExporterFile) -> anyhow::Result<Self> {
        t.only(&["target"])?;
        let Some(target) = &t.target else {
            bail!("target is required (the Maltrail server's UDP HOST:PORT)");
        };
        let address = target.strip_prefix("udp://").unwrap_or(target);
        split_host(address).context("target")?;
        Ok(MaltrailConfig {
            address: address.to_string(),
        })
    }
}

/// The Maltrail event line of a wire event (no line break).
pub fn event_line(e: &v1::Event) -> String {
    let mut out = String::with_capacity(160);
    push_maltrail_ts(&mut out, e.ts_us);
    let port = |p: u32| if p == 0 { String::new() } else { p.to_string() };
    for field in [
        e.sensor.as_str(),
        &e.src_ip,
        &port(e.src_port),
        &e.dst_ip,
        &port(e.dst_port),
        &e.proto,
        &e.r#type,
        &e.trail,
        &e.info,
        &e.reference,
    ] {
        out.push(' ');
        // Line breaks would split the event in the server's log.
        push_maltrail_value(&mut out, &field.replace(['\r', '\n'], " "));
    }
    out
}

/// The datagram of an event: `<epoch seconds> <line>\n`.
pub fn datagram(e: &v1::Event) -> String {
    format!("{} {}\n", e.ts_us.div_euclid(1_000_000), event_line(e))
}

/// The Maltrail sink.
pub struct MaltrailSink {
    cfg: MaltrailConfig,
    socket: Option<UdpSocket>,
}

impl MaltrailSink {
    /// A sink that opens its socket on first delivery.
    pub fn new(cfg: MaltrailConfig) -> Self {
        MaltrailSink { cfg, socket: None }
    }
}

impl Sink for MaltrailSink {
    async fn deliver(
        &mut self,
        events: &[v1::Event],
        _stats: &ExporterStats,
    ) -> Result<(), SinkError> {
        if self.socket.is_none() {
            let addr = tokio::net::lookup_host(&self.cfg.address)
                .await?
                .next()
                .ok_or_else(|| SinkError(format!("{} resolves to no address", self.cfg.address)))?;
            self.socket = Some(super::connected_udp(addr).await?);
        }
        let s = self.socket.as_ref().expect("opened above");
        for e in events {
            if let Err(err) = s.send(datagram(e).as_bytes()).await {
                self.socket = None;
                return Err(err.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_the_sensors_maltrail_line() {
        use xtrail_detect::event::{Action, Details, Event, EventType, Severity};
        let sensor_event = Event {
            ts_us: 1_786_094_062_117_034,
            sensor: "gw 1".into(),
            src_ip: "198.18.0.7".parse().unwrap(),
            src_port: 41234,
            dst_ip: "2001:db8::7".parse().unwrap(),
            dst_port: 0,
            proto: "ICMP".into(),
            kind: EventType::Ip,
            trail: "say \"hi\"".into(),
            info: "asyncrat (malware)".into(),
            reference: String::new(),
            severity: Severity::High,
            action: Action::Pass,
            iface: None,
            trail_set_version: String::new(),
            details: Details::default(),
        };
        let wire = v1::Event::from(&sensor_event);
        assert_eq!(event_line(&wire), sensor_event.to_maltrail());
        assert_eq!(
            datagram(&wire),
            "1786094062 \"2026-08-07 09:14:22.117034\" \"gw 1\" 198.18.0.7 41234 2001:db8::7 - ICMP IP \"say \"\"hi\"\"\" \"asyncrat (malware)\" -\n"
        );
    }
}
