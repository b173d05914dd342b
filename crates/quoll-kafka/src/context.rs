//! The librdkafka client context of quoll's sources and sinks: it sends
//! librdkafka's log lines to `tracing` under the source's or sink's name,
//! says once (not on every retry) when the brokers become unreachable and
//! when they are back, and keeps the first failed delivery of a producer.
//!
//! Invariant: `down` is true from a "brokers unreachable" report until
//! something succeeded against a broker again ([`Health::up`]); the
//! unavailable and available lines alternate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError as ClientError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Who;

/// The context of one client.
pub(crate) struct Health {
    pub who: Who,
    down: AtomicBool,
    /// Why the brokers are unreachable, while they are.
    reason: Mutex<Option<String>>,
    /// Producers: the first delivery that failed since the last take.
    failed_delivery: Mutex<Option<ClientError>>,
}

impl Health {
    pub fn new(who: Who) -> Health {
        Health {
            who,
            down: AtomicBool::new(false),
            reason: Mutex::new(None),
            failed_delivery: Mutex::new(None),
        }
    }

    /// The brokers can't be reached: logged the first time only.
    pub fn down(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(reason.to_string());
        }
        if !self.down.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "{}: the brokers are unreachable ({reason}); waiting for them and retrying",
                self.who
            );
        }
    }

    /// Something succeeded against a broker; true if they were down.
    pub fn up(&self) -> bool {
        let was_down = self.down.swap(false, Ordering::SeqCst);
        if was_down {
            tracing::warn!("{}: the brokers are reachable again; resuming", self.who);
        }
        was_down
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub fn down_reason(&self) -> String {
        self.reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "no answer".to_string())
    }

    /// The first failed delivery since the last call, if any.
    pub fn take_failed_delivery(&self) -> Option<ClientError> {
        self.failed_delivery.lock().ok().and_then(|mut f| f.take())
    }
}

/// librdkafka errors that mean "no broker answers" rather than "the
/// request is wrong".
pub(crate) fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::TimedOutQueue
            | RDKafkaErrorCode::MessageTimedOut
    )
}

/// The librdkafka context: a shared [`Health`] (a newtype, as the traits
/// are foreign and so is `Arc`).
#[derive(Clone)]
pub(crate) struct Ctx(pub Arc<Health>);

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let who = &self.0.who;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!("{who}: librdkafka {fac}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!("{who}: librdkafka {fac}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!("{who}: librdkafka {fac}: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!("{who}: librdkafka {fac}: {message}"),
        }
    }

    fn error(&self, error: ClientError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(code) if is_unreachable(code) => self.0.down(reason),
            _ => tracing::error!("{}: {error}: {reason}", self.0.who),
        }
    }
}

impl ConsumerContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.up();
            }
            Err((e, _)) => {
                if let Ok(mut f) = self.0.failed_delivery.lock() {
                    if f.is_none() {
                        *f = Some(e.clone());
                    }
                }
            }
        }
    }
}
