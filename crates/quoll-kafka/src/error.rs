//! The errors of the Kafka source and sink.
//!
//! Every error names the source or sink, its topic and brokers, and the
//! worker (`who`, built once by `config::Who`), so a line in a
//! worker's log says which of possibly many connectors failed.

use std::path::PathBuf;

use rdkafka::error::KafkaError as ClientError;

/// What a Kafka source or sink fails with.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("{who}: bad broker address '{address}': {reason}")]
    BadBrokerAddress {
        who: String,
        address: String,
        reason: String,
    },
    #[error("{who}: the topic does not exist on the brokers (create it first)")]
    MissingTopic { who: String },
    #[error("{who}: invalid configuration: {problem}")]
    Config { who: String, problem: String },
    #[error(
        "{who}: a message of {size} bytes (key and payload) is over the maximum message size of \
         {max} bytes; it was not sent"
    )]
    MessageTooLarge {
        who: String,
        size: usize,
        max: usize,
    },
    #[error("{who}: partition {partition} does not exist (the topic has {partitions}); the message was not sent")]
    NoSuchPartition {
        who: String,
        partition: i32,
        partitions: usize,
    },
    #[error(
        "{who}: fenced: another producer with transactional id '{transactional_id}' has started \
         (a newer incarnation of this worker); this one must stop"
    )]
    Fenced {
        who: String,
        transactional_id: String,
    },
    #[error("{who}: can't {action}: {source}")]
    Client {
        who: String,
        action: String,
        // Boxed: librdkafka's error is large and errors travel by value.
        #[source]
        source: Box<ClientError>,
    },
    #[error("{who}: write-ahead file {}: can't {action}: {source}", .path.display())]
    Wal {
        who: String,
        path: PathBuf,
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{who}: write-ahead file {}: {problem}; the output of the checkpoint it holds can't be \
         resent (move the file away to go on without it)",
        .path.display()
    )]
    WalCorrupt {
        who: String,
        path: PathBuf,
        problem: String,
    },
    #[error("{who}: can't read the commit log (topic '{topic}'): {problem}")]
    CommitLog {
        who: String,
        topic: String,
        problem: String,
    },
    #[error("{who}: {reason}")]
    Failed { who: String, reason: String },
    #[error("{who}: stopped")]
    Stopped { who: String },
}

impl KafkaError {
    /// The client error underneath, if any.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            KafkaError::Client { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
