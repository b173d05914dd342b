//! The commit log of exactly-once sinks: how a recovering sink learns which
//! of its transactions committed.
//!
//! Every transaction an exactly-once sink commits carries, as its last
//! record, a *commit record* on partition 0 of the commit topic
//! ([`DEFAULT_COMMIT_TOPIC`]): key the sink's transactional id, value
//! `<run id> <checkpoint id>` in ASCII. The record is part of the
//! transaction, so it is committed exactly when the transaction's output
//! is: the newest committed commit record of a sink and run names the last
//! checkpoint whose output Kafka holds.
//!
//! # Reading it: the read_committed rule, applied here
//!
//! A client's `read_committed` filtering is the broker's work, and brokers
//! differ (tansu 0.6 hands the records of aborted transactions to
//! read_committed consumers), while librdkafka hides the control records
//! (commit and abort markers) that would settle the question. So recovery
//! fetches the partition's record batches as stored, control batches
//! included (a Kafka `Fetch` at `read_uncommitted`, framed and parsed with
//! the `kafka-protocol` crate over a plain TCP connection to the
//! partition's leader), and applies the rule itself ([`settle`]):
//!
//! - a commit record counts once a COMMIT control record of the same
//!   producer id and epoch follows it;
//! - an ABORT control record of that producer and epoch, or any batch of
//!   the same producer with a newer epoch (a new incarnation fenced the
//!   writer), ends it uncommitted;
//! - one with neither after it is still *open*: its writer may yet commit
//!   it, unless it has been fenced (recovery fences first, then reads).
//!
//! # Why not the consumer group's offsets
//!
//! The sink used to commit a consumer-group offset in each transaction
//! (`send_offsets_to_transaction`) and read it back. Kafka answers such a
//! read only once the group's transactional offsets are stable, but tansu
//! applies a committed transaction's offsets only once every other
//! producer's transaction interleaved with it has ended; with a sink per
//! worker there nearly always is one, and a marker stayed 15 checkpoints
//! behind in a crash test, which made a recovering sink send committed
//! output again. Control records are written when the transaction ends, on
//! every broker.
//!
//! # Invariants
//!
//! - Commit records are produced only inside a transaction, as its last
//!   record, just before the commit, and never twice in one transaction.
//! - A scan covers `[start, high watermark)` of the partition for a start
//!   that moves back (to the log start at most) until it finds a committed
//!   record of the sink and run, so the answer is the newest one.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{Record, RecordBatchDecoder};
use quoll_core::checkpoint::CheckpointId;

/// The topic commit records go to, unless the sink's config names another.
/// It needs one partition; a sink creates it if it is missing.
pub const DEFAULT_COMMIT_TOPIC: &str = "quoll-sink-commits";

/// Fetch v4 and ListOffsets v2: the first versions with an isolation
/// level, which every broker that has transactions speaks.
const FETCH_VERSION: i16 = 4;
const LIST_OFFSETS_VERSION: i16 = 2;

/// ListOffsets' timestamps for the log's start and its end.
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;

/// The most bytes one fetch asks for.
const FETCH_MAX_BYTES: i32 = 8 << 20;

/// How many times a fetch that answers nothing below the high watermark is
/// asked again (see `Connection::batches_from`).
const EMPTY_RETRIES: usize = 20;
/// How many answers that start after the offset asked for make a lasting
/// gap (see `Connection::batches_from`).
const GAP_RETRIES: usize = 5;

/// How far back the first scan starts, in offsets. A sink writes two
/// (a commit record and its marker) per checkpoint, and recovery comes
/// soon after the last commit, so one scan almost always does.
const FIRST_WINDOW: i64 = 4096;

/// The value of a commit record.
pub(crate) fn commit_value(run: &str, id: CheckpointId) -> Vec<u8> {
    format!("{run} {id}").into_bytes()
}

/// Reads a commit record's value; None if it is not one of `run`.
fn parse_value(value: &[u8], run: &str) -> Option<CheckpointId> {
    let text = std::str::from_utf8(value).ok()?;
    let (r, id) = text.split_once(' ')?;
    if r != run {
        return None;
    }
    id.parse().ok()
}

/// A control record's kind (the key's second int16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    Abort,
    Commit,
}

/// One record as stored in the commit topic's partition, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Some for a control record (a transaction marker).
    pub marker: Option<Marker>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

/// What a scan found for one sink and run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The newest checkpoint whose commit record committed.
    pub committed: Option<CheckpointId>,
    /// A newer commit record whose transaction has not ended yet.
    pub open: Option<CheckpointId>,
}

/// Applies the read_committed rule (module docs) to `entries`, in offset
/// order, for the sink whose commit records have key `key`, in run `run`.
pub(crate) fn settle(entries: &[Entry], key: &[u8], run: &str) -> Verdict {
    // The sink's commit record waiting for its transaction's end:
    // (producer id, epoch, checkpoint).
    let mut pending: Option<(i64, i16, CheckpointId)> = None;
    let mut committed = None;
    for e in entries {
        if let Some((pid, epoch, id)) = pending {
            if e.producer_id == pid && e.producer_epoch > epoch {
                // A newer incarnation took over before this one ended.
                pending = None;
            } else if e.producer_id == pid && e.producer_epoch == epoch {
                match e.marker {
                    Some(Marker::Commit) => {
                        committed = Some(id);
                        pending = None;
                    }
                    Some(Marker::Abort) => pending = None,
                    None => {}
                }
            }
        }
        if e.marker.is_none() && e.key.as_deref() == Some(key) {
            // A newer commit record of the sink: whatever was pending
            // before it was fenced (its writer's successor wrote this).
            if let Some(id) = e.value.as_deref().and_then(|v| parse_value(v, run)) {
                pending = Some((e.producer_id, e.producer_epoch, id));
            }
        }
    }
    Verdict {
        committed,
        open: pending.map(|(_, _, id)| id),
    }
}

/// Scans partition 0 of `topic`, led by `leader` (`host:port`), for the
/// sink's commit records (key `key`, run `run`), from the end back until a
/// committed one is found or the log's start is reached.
pub(crate) fn scan(
    leader: &str,
    topic: &str,
    key: &[u8],
    run: &str,
    timeout: Duration,
) -> Result<Verdict, String> {
    let mut conn = Connection::open(leader, timeout)?;
    // Read uncommitted: a broker's last stable offset may stop short of
    // committed records (tansu holds it back behind other transactions).
    let log_start = conn.offset(topic, EARLIEST)?;
    let high = conn.offset(topic, LATEST)?;
    let mut window = FIRST_WINDOW;
    loop {
        let start = (high - window).max(log_start);
        let entries = conn.read_range(topic, start, high)?;
        let verdict = settle(&entries, key, run);
        if verdict.committed.is_some() || start == log_start {
            return Ok(verdict);
        }
        window = window.saturating_mul(8);
    }
}

/// One connection to a broker speaking the Kafka protocol, plaintext.
struct Connection {
    stream: TcpStream,
    leader: String,
    correlation: i32,
}

impl Connection {
    fn open(leader: &str, timeout: Duration) -> Result<Connection, String> {
        let addr = leader
            .to_socket_addrs()
            .map_err(|e| format!("can't resolve the commit topic's leader {leader}: {e}"))?
            .next()
            .ok_or_else(|| format!("the commit topic's leader {leader} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("can't connect to the commit topic's leader {leader}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("can't set up the connection to {leader}: {e}"))?;
        Ok(Connection {
            stream,
            leader: leader.to_string(),
            correlation: 0,
        })
    }

    /// Every record of partition 0 of `topic` in `[start, end)`, control
    /// records included.
    fn read_range(&mut self, topic: &str, start: i64, end: i64) -> Result<Vec<Entry>, String> {
        let mut entries = Vec::new();
        let mut next = start;
        while next < end {
            let batches = self.batches_from(topic, next)?;
            if batches.is_empty() {
                break;
            }
            for r in batches.into_iter().flatten() {
                if r.offset < next {
                    continue;
                }
                next = r.offset + 1;
                let marker = if r.control {
                    match r.key.as_deref() {
                        Some([_, _, 0, 0, ..]) => Some(Marker::Abort),
                        Some([_, _, 0, 1, ..]) => Some(Marker::Commit),
                        // A control record of another kind settles nothing.
                        _ => continue,
                    }
                } else {
                    None
                };
                entries.push(Entry {
                    producer_id: r.producer_id,
                    producer_epoch: r.producer_epoch,
                    marker,
                    key: r.key,
                    value: r.value,
                });
            }
        }
        Ok(entries)
    }

    /// The record batches of partition 0 of `topic` from the one holding
    /// offset `want` on (none at the high watermark). tansu with S3
    /// storage answers a fetch with nothing when reading its store takes
    /// longer than the fetch's wait, and sometimes with batches after
    /// `want` while the one holding it is not visible yet; both are asked
    /// again. A gap that lasts ([`GAP_RETRIES`] answers) is read past, as
    /// every Kafka consumer reads past offsets that hold no batch (tansu on
    /// S3 kept a one-offset gap in a data topic after a restart): failing
    /// instead would stop this sink's recovery for good. A commit record
    /// or marker the broker lost can only make its checkpoint look
    /// uncommitted: its output would be sent again (doubled), never lost.
    fn batches_from(&mut self, topic: &str, want: i64) -> Result<Vec<Vec<Record>>, String> {
        let mut high = want;
        let mut gaps = 0;
        for _ in 0..EMPTY_RETRIES {
            let (raw, h) = self.fetch(topic, want)?;
            high = h;
            if want >= high {
                return Ok(Vec::new());
            }
            let mut batches = self.whole_batches(raw)?;
            if batches.is_empty() {
                continue;
            }
            let holding = batches.iter().position(|b| {
                b.first().is_some_and(|r| r.offset <= want)
                    && b.last().is_some_and(|r| r.offset >= want)
            });
            if let Some(i) = holding {
                return Ok(batches.split_off(i));
            }
            gaps += 1;
            if gaps == GAP_RETRIES {
                tracing::warn!(
                    "{topic}: offset {want} holds no record batch (a gap in the log); reading on \
                     from the next batch"
                );
                batches.retain(|b| b.first().is_some_and(|r| r.offset > want));
                return Ok(batches);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{EMPTY_RETRIES} fetches at offset {want} answered nothing (high watermark {high})"
        ))
    }

    /// The whole record batches in a fetch answer (it may end with one cut
    /// short), each as its records.
    fn whole_batches(&self, mut buf: Bytes) -> Result<Vec<Vec<Record>>, String> {
        let mut batches = Vec::new();
        while buf.remaining() >= 12 {
            // Base offset (8), length (4), then `length` bytes.
            let length = i32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
            let whole = 12 + usize::try_from(length).map_err(|_| self.bad("a batch length"))?;
            if buf.remaining() < whole {
                break;
            }
            let mut one = buf.split_to(whole);
            let set = RecordBatchDecoder::decode(&mut one)
                .map_err(|e| self.bad(&format!("a record batch ({e})")))?;
            if !set.records.is_empty() {
                batches.push(set.records);
            }
        }
        Ok(batches)
    }

    /// One `Fetch` of partition 0 of `topic` from `offset`: its records'
    /// bytes and the high watermark.
    fn fetch(&mut self, topic: &str, offset: i64) -> Result<(Bytes, i64), String> {
        let request = FetchRequest::default()
            .with_replica_id((-1).into())
            // tansu answers min_bytes 0 with no partitions at all; reads
            // stay below the high watermark, so there is data to wait for.
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(0)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(FETCH_MAX_BYTES)])]);
        let response: FetchResponse = self.call(ApiKey::Fetch, &request, FETCH_VERSION)?;
        let part = response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == 0)
            .ok_or_else(|| self.bad("an answer without partition 0"))?;
        if part.error_code != 0 {
            return Err(format!(
                "{} answered a fetch of {topic} partition 0 at offset {offset} with Kafka error {}",
                self.leader, part.error_code
            ));
        }
        Ok((part.records.unwrap_or_default(), part.high_watermark))
    }

    /// The offset of partition 0 of `topic` that `ListOffsets` gives for
    /// `timestamp` ([`EARLIEST`] or [`LATEST`]), uncommitted.
    fn offset(&mut self, topic: &str, timestamp: i64) -> Result<i64, String> {
        let request = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_isolation_level(0)
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(timestamp)])]);
        let response: ListOffsetsResponse =
            self.call(ApiKey::ListOffsets, &request, LIST_OFFSETS_VERSION)?;
        let part = response
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == 0)
            .ok_or_else(|| self.bad("an answer without partition 0"))?;
        if part.error_code != 0 {
            return Err(format!(
                "{} answered a list of {topic} partition 0's offsets with Kafka error {}",
                self.leader, part.error_code
            ));
        }
        Ok(part.offset)
    }

    /// Sends `request` (API `key`, as `version`) and reads its answer.
    fn call<Q, A>(&mut self, key: ApiKey, request: &Q, version: i16) -> Result<A, String>
    where
        Q: Encodable + HeaderVersion,
        A: Decodable + HeaderVersion,
    {
        self.correlation = self.correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("quoll-commit-log")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, Q::header_version(version))
            .and_then(|()| request.encode(&mut body, version))
            .map_err(|e| format!("can't encode a request: {e}"))?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(body.len() as i32);
        frame.put(body);
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("can't send a request to {}: {e}", self.leader))?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| format!("no answer from {}: {e}", self.leader))?;
        let size =
            usize::try_from(i32::from_be_bytes(size)).map_err(|_| self.bad("a frame size"))?;
        let mut answer = vec![0u8; size];
        self.stream
            .read_exact(&mut answer)
            .map_err(|e| format!("an answer from {} was cut short: {e}", self.leader))?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, A::header_version(version))
            .map_err(|e| self.bad(&format!("a response header ({e})")))?;
        if header.correlation_id != self.correlation {
            return Err(self.bad("the correlation id"));
        }
        A::decode(&mut answer, version).map_err(|e| self.bad(&format!("an answer ({e})")))
    }

    fn bad(&self, what: &str) -> String {
        format!("can't read {what} in an answer from {}", self.leader)
    }
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"quoll/app/w1/out";

    fn data(pid: i64, epoch: i16, key: &[u8], value: &str) -> Entry {
        Entry {
            producer_id: pid,
            producer_epoch: epoch,
            marker: None,
            key: Some(Bytes::copy_from_slice(key)),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    fn marker(pid: i64, epoch: i16, m: Marker) -> Entry {
        Entry {
            producer_id: pid,
            producer_epoch: epoch,
            marker: Some(m),
            key: None,
            value: None,
        }
    }

    #[test]
    fn values_round_trip_and_other_runs_are_ignored() {
        assert_eq!(parse_value(&commit_value("ab12", 7), "ab12"), Some(7));
        assert_eq!(parse_value(&commit_value("ab12", 7), "cd34"), None);
        assert_eq!(parse_value(b"ab12", "ab12"), None);
        assert_eq!(parse_value(b"ab12 x", "ab12"), None);
    }

    #[test]
    fn a_commit_marker_of_the_same_producer_and_epoch_commits() {
        let log = [
            data(5, 0, KEY, "r 1"),
            marker(5, 0, Marker::Commit),
            data(5, 0, KEY, "r 2"),
            marker(9, 0, Marker::Commit), // another producer's
            marker(5, 0, Marker::Commit),
        ];
        assert_eq!(
            settle(&log, KEY, "r"),
            Verdict {
                committed: Some(2),
                open: None
            }
        );
    }

    #[test]
    fn abort_and_fencing_end_a_record_uncommitted_and_open_ones_are_said() {
        let aborted = [
            data(5, 0, KEY, "r 1"),
            marker(5, 0, Marker::Commit),
            data(5, 0, KEY, "r 2"),
            marker(5, 0, Marker::Abort),
        ];
        assert_eq!(settle(&aborted, KEY, "r").committed, Some(1));
        // A commit marker of a newer epoch does not commit an older
        // epoch's record: the newer incarnation fenced it first.
        let fenced = [
            data(5, 0, KEY, "r 1"),
            data(5, 1, b"other", "x"),
            marker(5, 1, Marker::Commit),
        ];
        assert_eq!(settle(&fenced, KEY, "r"), Verdict::default());
        let open = [
            data(5, 0, KEY, "r 1"),
            marker(5, 0, Marker::Commit),
            data(5, 0, KEY, "r 2"),
        ];
        assert_eq!(
            settle(&open, KEY, "r"),
            Verdict {
                committed: Some(1),
                open: Some(2)
            }
        );
    }

    /// One transaction of the model: who wrote it, how it ended.
    #[derive(Debug, Clone, Copy)]
    enum End {
        Commit,
        Abort,
        Fenced,
        Open,
    }

    proptest! {
        /// Transactions of several sinks (each a producer id, its epochs
        /// growing at each fencing), with and without commit records,
        /// interleaved: the verdict for sink 0 is the newest checkpoint
        /// whose transaction committed, and the open one if its last is.
        #[test]
        fn settle_finds_the_newest_committed_checkpoint(
            txns in prop::collection::vec((0i64..3, any::<bool>(), 0u8..4), 0..40),
            seed in any::<u64>(),
        ) {
            // Per sink: its current epoch, checkpoint counter and the
            // entries of each transaction, written in order.
            let mut epoch = [0i16; 3];
            let mut next_id = [1u64; 3];
            let mut streams: Vec<Vec<Entry>> = vec![Vec::new(); 3];
            let mut truth: Option<u64> = None;
            let mut open: Option<u64> = None;
            let n = txns.len();
            for (i, (sink, with_record, end)) in txns.into_iter().enumerate() {
                let s = sink as usize;
                let key: Vec<u8> = if s == 0 { KEY.to_vec() } else { format!("other{s}").into_bytes() };
                let id = next_id[s];
                next_id[s] += 1;
                let e = epoch[s];
                let out = &mut streams[s];
                out.push(data(sink, e, b"output", "payload"));
                if with_record {
                    out.push(data(sink, e, &key, &format!("r {id}")));
                }
                // Only a sink's last transaction may stay open.
                let last_of_sink = i + 1 == n;
                let end = match end {
                    3 if !last_of_sink => 0,
                    x => x,
                };
                let end = [End::Commit, End::Abort, End::Fenced, End::Open][end as usize];
                match end {
                    End::Commit => out.push(marker(sink, e, Marker::Commit)),
                    End::Abort => out.push(marker(sink, e, Marker::Abort)),
                    End::Fenced => {
                        epoch[s] += 1;
                        out.push(data(sink, epoch[s], b"output", "next incarnation"));
                        out.push(marker(sink, epoch[s], Marker::Abort));
                    }
                    End::Open => {}
                }
                if s == 0 && with_record {
                    match end {
                        End::Commit => { truth = Some(id); open = None; }
                        End::Open => open = Some(id),
                        _ => {}
                    }
                }
            }
            // Interleave the sinks' streams at random, each kept in order.
            let mut log = Vec::new();
            let mut at = [0usize; 3];
            let mut x = seed | 1;
            while log.len() < streams.iter().map(Vec::len).sum::<usize>() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                let s = (x % 3) as usize;
                if at[s] < streams[s].len() {
                    log.push(streams[s][at[s]].clone());
                    at[s] += 1;
                }
            }
            prop_assert_eq!(settle(&log, KEY, "r"), Verdict { committed: truth, open });
        }
    }
}
