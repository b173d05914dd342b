//! The Kafka source against a real broker (tansu on 127.0.0.1): partitions
//! by worker index, start offsets and seeks, a topic that grows, offsets
//! committed to a group, clear start-up errors, and a broker outage.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use quoll_kafka::{
    Brokers, KafkaError, KafkaMessage, KafkaSource, KafkaSourceConfig, KafkaSourceEvent,
    KafkaSourceHandle,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;

fn config(addr: &str, topic: &str, index: usize, count: usize) -> KafkaSourceConfig {
    let mut c = KafkaSourceConfig::new(
        "app",
        "orders",
        &format!("w{index}"),
        topic,
        Brokers::parse(addr).unwrap(),
        index,
        count,
    );
    c.metadata_interval = Duration::from_millis(300);
    c
}

/// What a worker would keep of the events: records of the current epoch.
struct Collector {
    rx: mpsc::Receiver<KafkaSourceEvent>,
    epoch: u64,
    messages: Vec<KafkaMessage>,
    positions: BTreeMap<i32, i64>,
    assigned: Vec<(i32, i64)>,
    unavailable: usize,
    available: usize,
}

impl Collector {
    fn new(rx: mpsc::Receiver<KafkaSourceEvent>) -> Self {
        Collector {
            rx,
            epoch: 0,
            messages: Vec::new(),
            positions: BTreeMap::new(),
            assigned: Vec::new(),
            unavailable: 0,
            available: 0,
        }
    }

    /// Takes events until `done` holds (or panics after `limit`).
    async fn until(&mut self, limit: Duration, mut done: impl FnMut(&Collector) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = tokio::time::timeout(left, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out; got {} messages {:?}",
                        self.messages.len(),
                        self.values()
                    )
                })
                .expect("the source stopped");
            self.take(ev);
        }
    }

    fn take(&mut self, ev: KafkaSourceEvent) {
        match ev {
            KafkaSourceEvent::Assigned { partitions } => {
                for (p, o) in &partitions {
                    self.positions.entry(*p).or_insert(*o);
                }
                self.assigned.extend(partitions);
            }
            KafkaSourceEvent::Batch(b) if b.epoch == self.epoch => {
                // Positions follow the records, one past each partition's last.
                for (p, o) in &b.next_offsets {
                    let last = b
                        .messages
                        .iter()
                        .filter(|m| m.partition == *p)
                        .map(|m| m.offset)
                        .max();
                    assert_eq!(last.map(|l| l + 1), Some(*o));
                    self.positions.insert(*p, *o);
                }
                self.messages.extend(b.messages);
            }
            KafkaSourceEvent::Batch(_) => {}
            KafkaSourceEvent::Unavailable { .. } => self.unavailable += 1,
            KafkaSourceEvent::Available => self.available += 1,
            KafkaSourceEvent::Failed(e) => panic!("the source failed: {e}"),
        }
    }

    fn values(&self) -> Vec<String> {
        self.messages
            .iter()
            .map(|m| String::from_utf8_lossy(m.payload.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }

    fn values_of(&self, partition: i32) -> Vec<String> {
        self.messages
            .iter()
            .filter(|m| m.partition == partition)
            .map(|m| String::from_utf8_lossy(m.payload.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }
}

fn spawn(c: KafkaSourceConfig) -> (KafkaSourceHandle, Collector) {
    let (h, rx) = KafkaSource::spawn(c, 16).expect("spawn");
    (h, Collector::new(rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reads_its_partitions_in_order() {
    let broker = broker_or_skip!();
    broker.create_topic("in", 4);
    let mut input = Vec::new();
    let values: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
    for (i, v) in values.iter().enumerate() {
        input.push(((i % 4) as i32, Some("k"), v.as_str()));
    }
    broker.produce("in", &input);

    let (h0, mut w0) = spawn(config(&broker.addr(), "in", 0, 2));
    let (h1, mut w1) = spawn(config(&broker.addr(), "in", 1, 2));
    w0.until(Duration::from_secs(20), |c| c.messages.len() >= 20)
        .await;
    w1.until(Duration::from_secs(20), |c| c.messages.len() >= 20)
        .await;
    assert_eq!(w0.assigned, vec![(0, 0), (2, 0)]);
    assert_eq!(w1.assigned, vec![(1, 0), (3, 0)]);
    for (w, parts) in [(&w0, [0, 2]), (&w1, [1, 3])] {
        for p in parts {
            let expect: Vec<String> = (0..40)
                .filter(|i| i % 4 == p)
                .map(|i| format!("v{i}"))
                .collect();
            assert_eq!(w.values_of(p), expect, "partition {p}");
            let offsets: Vec<i64> = w
                .messages
                .iter()
                .filter(|m| m.partition == p)
                .map(|m| m.offset)
                .collect();
            assert!(offsets.windows(2).all(|o| o[0] < o[1]), "{offsets:?}");
            assert_eq!(w.positions[&p], offsets.last().unwrap() + 1);
        }
        assert!(w
            .messages
            .iter()
            .all(|m| m.key.as_deref() == Some(&b"k"[..])));
    }
    // Nothing more arrives: 40 records, each read once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(ev) = w0.rx.try_recv() {
        w0.take(ev);
    }
    assert_eq!(w0.messages.len() + w1.messages.len(), 40);
    h0.stop().await;
    h1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_offsets_and_seek_on_rollback() {
    let broker = broker_or_skip!();
    broker.create_topic("in", 1);
    let values: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let input: Vec<_> = values.iter().map(|v| (0, None, v.as_str())).collect();
    broker.produce("in", &input);

    let mut c = config(&broker.addr(), "in", 0, 1);
    c.start_offsets.insert(0, 3);
    let (h, mut w) = spawn(c);
    w.until(Duration::from_secs(20), |c| c.messages.len() >= 7)
        .await;
    assert_eq!(w.assigned, vec![(0, 3)]);
    assert_eq!(w.values(), values[3..].to_vec());

    // Roll back to offset 5: records from 5 again, under a new epoch.
    w.epoch = h.seek(BTreeMap::from([(0, 5)])).await.expect("seek");
    assert_eq!(w.epoch, 1);
    w.messages.clear();
    w.until(Duration::from_secs(20), |c| c.messages.len() >= 5)
        .await;
    assert_eq!(w.values(), values[5..].to_vec());

    // No position for the partition: back to where it started.
    w.epoch = h.seek(BTreeMap::new()).await.expect("seek");
    w.messages.clear();
    w.until(Duration::from_secs(20), |c| c.messages.len() >= 7)
        .await;
    assert_eq!(w.values(), values[3..].to_vec());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_while_the_worker_is_not_taking_batches() {
    let broker = broker_or_skip!();
    broker.create_topic("in", 1);
    let values: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
    let input: Vec<_> = values.iter().map(|v| (0, None, v.as_str())).collect();
    broker.produce("in", &input);
    let mut c = config(&broker.addr(), "in", 0, 1);
    c.max_batch = 1;
    // A channel of 1 event fills at once: the reader is blocked on it.
    let (h, rx) = KafkaSource::spawn(c, 1).expect("spawn");
    let mut w = Collector::new(rx);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let epoch = tokio::time::timeout(Duration::from_secs(5), h.seek(BTreeMap::from([(0, 190)])))
        .await
        .expect("a seek is served while the channel is full")
        .expect("seek");
    w.epoch = epoch;
    w.until(Duration::from_secs(20), |c| c.messages.len() >= 10)
        .await;
    assert_eq!(w.values(), values[190..].to_vec());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_while_running_are_read_from_the_start() {
    // tansu can't add partitions to a topic (no CreatePartitions), and
    // deleting and re-creating the topic under a live client crashes
    // librdkafka 2.12 (SIGSEGV in its metadata cache, seen here). So the
    // topic has 4 partitions and the proxy shows clients only 2 of them,
    // then all 4: to the source, the topic grew.
    let proxy_port = common::free_port();
    let port = common::free_port();
    let Some(broker) = common::Broker::start_advertising(port, proxy_port) else {
        eprintln!("\n*** SKIPPED: no Kafka broker binary (see scripts/kafka-broker.sh) ***\n");
        return;
    };
    let proxy = common::Proxy::new(proxy_port, port);
    let via_proxy = format!("127.0.0.1:{proxy_port}");
    broker.create_topic("grow", 4);
    common::produce(
        &via_proxy,
        "grow",
        &[
            (0, None, "a0"),
            (1, None, "a1"),
            (2, None, "b2"),
            (3, None, "b3"),
            (3, None, "c3"),
        ],
    );
    proxy.limit_partitions(Some(("grow", 2)));
    let (h, mut w) = spawn(config(&via_proxy, "grow", 0, 1));
    w.until(Duration::from_secs(20), |c| c.messages.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(ev) = w.rx.try_recv() {
        w.take(ev);
    }
    assert_eq!(w.assigned, vec![(0, 0), (1, 0)], "only 2 partitions shown");
    assert_eq!(w.messages.len(), 2);

    proxy.limit_partitions(None);
    w.until(Duration::from_secs(30), |c| c.messages.len() >= 5)
        .await;
    assert_eq!(&w.assigned[2..], &[(2, 0), (3, 0)]);
    assert_eq!(w.values_of(2), vec!["b2"]);
    assert_eq!(w.values_of(3), vec!["b3", "c3"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_to_a_group_without_joining_it() {
    let broker = broker_or_skip!();
    broker.create_topic("in", 2);
    broker.produce("in", &[(0, None, "x"), (1, None, "y")]);
    let c = config(&broker.addr(), "in", 0, 1);
    let group = c.commit_group.clone();
    let (h, mut w) = spawn(c);
    w.until(Duration::from_secs(20), |c| c.messages.len() >= 2)
        .await;
    let started = Instant::now();
    h.commit_offsets(BTreeMap::from([(0, 1), (1, 1)]))
        .await
        .expect("commit");
    assert!(started.elapsed() < Duration::from_secs(10), "no group join");

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("in", 0);
    tpl.add_partition("in", 1);
    let got = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for p in [0, 1] {
        assert_eq!(
            got.find_partition("in", p).unwrap().offset(),
            Offset::Offset(1)
        );
    }
    h.stop().await;
}

async fn failure(c: KafkaSourceConfig) -> KafkaError {
    let (_h, mut rx) = KafkaSource::spawn(c, 4).expect("spawn");
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(KafkaSourceEvent::Failed(e))) => return e,
            Ok(Some(_)) => {}
            other => panic!("no failure: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_or_a_bad_address_is_a_clear_error() {
    let broker = broker_or_skip!();
    let e = failure(config(&broker.addr(), "nope", 1, 3)).await;
    assert!(matches!(e, KafkaError::MissingTopic { .. }), "{e:?}");
    let text = e.to_string();
    for part in [
        "source 'orders'",
        "worker 'w1'",
        "topic 'nope'",
        &broker.addr(),
        "does not exist",
    ] {
        assert!(text.contains(part), "{text} lacks {part}");
    }
    let e = failure(config("no-such-host.invalid:9092", "in", 0, 1)).await;
    assert!(matches!(e, KafkaError::BadBrokerAddress { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-host.invalid:9092"), "{e}");
    assert!(KafkaSource::spawn(config(&broker.addr(), "in", 2, 2), 4).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_reported_and_reading_resumes() {
    let proxy_port = common::free_port();
    let port = common::free_port();
    let Some(broker) = common::Broker::start_advertising(port, proxy_port) else {
        eprintln!("\n*** SKIPPED: no Kafka broker binary (see scripts/kafka-broker.sh) ***\n");
        return;
    };
    let mut proxy = common::Proxy::new(proxy_port, port);
    broker.create_topic("in", 1);
    let first: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
    let via_proxy = format!("127.0.0.1:{proxy_port}");
    let (h, mut w) = spawn(config(&via_proxy, "in", 0, 1));
    // The test's producer goes through the proxy too (the broker
    // advertises the proxy's address).
    common::produce(
        &via_proxy,
        "in",
        &first
            .iter()
            .map(|v| (0, None, v.as_str()))
            .collect::<Vec<_>>(),
    );
    w.until(Duration::from_secs(20), |c| c.messages.len() >= 5)
        .await;

    proxy.cut();
    w.until(Duration::from_secs(30), |c| c.unavailable >= 1)
        .await;
    assert!(w.messages.len() == 5, "nothing read while down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let second: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    common::produce(
        &via_proxy,
        "in",
        &second
            .iter()
            .map(|v| (0, None, v.as_str()))
            .collect::<Vec<_>>(),
    );
    w.until(Duration::from_secs(60), |c| {
        c.messages.len() >= 10 && c.available >= 1
    })
    .await;
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(w.values(), all, "no record lost or read twice");
    h.stop().await;
}
