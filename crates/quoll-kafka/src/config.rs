//! What the source and the sink share: broker lists, Wallaroo's log levels,
//! the names quoll derives for Kafka (client ids, transactional ids,
//! consumer groups), and the librdkafka settings common to both.
//!
//! Invariants: a [`Brokers`] list is never empty and every entry has a host
//! and a port in 1..=65535; derived Kafka names are injective in the names
//! they are made of (each part is escaped), so two sinks never share a
//! transactional id.

use std::fmt;
use std::net::ToSocketAddrs;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::error::KafkaError;

/// Kafka's default port, used for a broker given without one.
pub const DEFAULT_PORT: u16 = 9092;

/// A checked list of bootstrap brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokers(Vec<(String, u16)>);

impl Brokers {
    /// `host[:port],...` (the `--kafka_*_brokers` form); a missing port is
    /// 9092.
    pub fn parse(list: &str) -> Result<Brokers, String> {
        let pairs: Vec<(String, String)> = list
            .split(',')
            .map(|b| match b.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.to_string()),
                None => (b.to_string(), DEFAULT_PORT.to_string()),
            })
            .collect();
        Brokers::from_pairs(&pairs)
    }

    /// `(host, port)` pairs, as `wallaroo` configs hold them.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Brokers, String> {
        if pairs.is_empty() {
            return Err("no brokers given".to_string());
        }
        let mut out = Vec::with_capacity(pairs.len());
        for (host, port) in pairs {
            let host = host.trim();
            if host.is_empty() {
                return Err(format!(
                    "a broker has no host ('{host}:{port}'); give host[:port]"
                ));
            }
            let port = match port.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("broker '{host}:{port}': the port is not 1-65535")),
            };
            out.push((host.to_string(), port));
        }
        Ok(Brokers(out))
    }

    /// Resolves every host, so a typo is an error now rather than a client
    /// that retries forever.
    pub(crate) fn check_resolvable(&self, who: &Who) -> Result<(), KafkaError> {
        for (host, port) in &self.0 {
            let address = format!("{host}:{port}");
            match (host.as_str(), *port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(KafkaError::BadBrokerAddress {
                        who: who.to_string(),
                        address,
                        reason: "the host name resolves to no address".to_string(),
                    })
                }
                Err(e) => {
                    return Err(KafkaError::BadBrokerAddress {
                        who: who.to_string(),
                        address,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (host, port)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{host}:{port}")?;
        }
        Ok(())
    }
}

/// Wallaroo's Kafka log levels (`--kafka_*_log_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Fine,
    Info,
    #[default]
    Warn,
    Error,
}

impl LogLevel {
    /// `Fine`, `Info`, `Warn` or `Error`.
    pub fn parse(s: &str) -> Result<LogLevel, String> {
        match s {
            "Fine" => Ok(LogLevel::Fine),
            "Info" => Ok(LogLevel::Info),
            "Warn" => Ok(LogLevel::Warn),
            "Error" => Ok(LogLevel::Error),
            other => Err(format!(
                "log level '{other}' is not one of Fine, Info, Warn, Error"
            )),
        }
    }

    fn rdkafka(self) -> RDKafkaLogLevel {
        match self {
            LogLevel::Fine => RDKafkaLogLevel::Debug,
            LogLevel::Info => RDKafkaLogLevel::Info,
            LogLevel::Warn => RDKafkaLogLevel::Warning,
            LogLevel::Error => RDKafkaLogLevel::Error,
        }
    }
}

/// How a source or sink is named in logs and errors: kind, name, worker,
/// topic and brokers.
#[derive(Debug, Clone)]
pub struct Who(std::sync::Arc<str>);

impl Who {
    pub(crate) fn new(kind: &str, name: &str, worker: &str, topic: &str, brokers: &Brokers) -> Who {
        Who(
            format!("Kafka {kind} '{name}' of worker '{worker}' (topic '{topic}' at {brokers})")
                .into(),
        )
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `quoll/<part>/<part>/...` with `%` and `/` in each part escaped, so
/// distinct name tuples never give the same string.
pub(crate) fn derived_name(parts: &[&str]) -> String {
    let mut out = String::from("quoll");
    for part in parts {
        out.push('/');
        for c in part.chars() {
            match c {
                '%' => out.push_str("%25"),
                '/' => out.push_str("%2F"),
                c => out.push(c),
            }
        }
    }
    out
}

/// The settings both clients share.
pub(crate) fn base_config(
    brokers: &Brokers,
    client_id: &str,
    level: LogLevel,
    options: &[(String, String)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers.to_string())
        .set("client.id", client_id)
        // Reconnect quickly once a broker is back.
        .set("reconnect.backoff.max.ms", "1000")
        .set("allow.auto.create.topics", "false")
        .set_log_level(level.rdkafka());
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

/// The librdkafka wait used for a blocking call that is retried on
/// timeout.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_parse_and_print() {
        let b = Brokers::parse("a:1,b").unwrap();
        assert_eq!(b.to_string(), "a:1,b:9092");
        assert!(Brokers::parse("").unwrap_err().contains("no host"));
        assert!(Brokers::parse("h:x").unwrap_err().contains("port"));
        assert!(Brokers::parse("h:0").unwrap_err().contains("port"));
        assert!(Brokers::from_pairs(&[]).unwrap_err().contains("no brokers"));
    }

    #[test]
    fn derived_names_are_injective() {
        assert_ne!(derived_name(&["a/b", "c"]), derived_name(&["a", "b/c"]));
        assert_ne!(derived_name(&["a%2Fb"]), derived_name(&["a/b"]));
        assert_eq!(derived_name(&["app", "w1", "sink"]), "quoll/app/w1/sink");
    }

    #[test]
    fn log_levels() {
        assert_eq!(LogLevel::parse("Fine").unwrap(), LogLevel::Fine);
        assert!(LogLevel::parse("Loud").is_err());
    }
}
