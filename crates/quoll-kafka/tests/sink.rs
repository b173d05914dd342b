//! The Kafka sink against a real broker (tansu on 127.0.0.1). What is
//! committed is read with `tests/kafka/committed_reader.py`, which applies
//! the read_committed rule itself: tansu hands aborted records to
//! read_committed consumers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use quoll_kafka::{
    Brokers, Delivery, KafkaError, KafkaRecord, KafkaSink, KafkaSinkConfig, KafkaSinkHandle,
    Recovered,
};

fn record(v: &str) -> KafkaRecord {
    KafkaRecord {
        key: None,
        payload: Bytes::copy_from_slice(v.as_bytes()),
        partition: Some(0),
    }
}

fn records(vs: &[&str]) -> Vec<KafkaRecord> {
    vs.iter().map(|v| record(v)).collect()
}

fn config(addr: &str, topic: &str, dir: Option<&Path>) -> KafkaSinkConfig {
    let delivery = match dir {
        Some(d) => Delivery::ExactlyOnce {
            resilience_dir: d.to_path_buf(),
        },
        None => Delivery::AtLeastOnce,
    };
    let mut c = KafkaSinkConfig::new(
        "app",
        "w1",
        "kafka_sink",
        topic,
        Brokers::parse(addr).unwrap(),
        delivery,
    );
    c.transaction_timeout = Duration::from_secs(20);
    c
}

async fn started(c: KafkaSinkConfig, committed: Option<u64>) -> (KafkaSinkHandle, Recovered) {
    let h = KafkaSink::spawn(c).expect("spawn");
    let r = h.recover(committed).await.expect("recover");
    (h, r)
}

async fn write(h: &KafkaSinkHandle, vs: &[&str]) {
    let out = h.write(records(vs)).await.expect("write");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(out.accepted, vs.len());
}

/// The write-ahead files in `dir` (not the run id file).
fn wal_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains(".wal-"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_sends_keys_and_partitions() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 3);
    let (h, r) = started(config(&broker.addr(), "out", None), None).await;
    assert_eq!(r, Recovered::default());
    assert_eq!(h.transactional_id(), None);
    let recs = vec![
        KafkaRecord {
            key: Some(Bytes::from_static(b"k1")),
            payload: Bytes::from_static(b"one"),
            partition: Some(2),
        },
        KafkaRecord {
            key: None,
            payload: Bytes::from_static(b"two"),
            partition: Some(1),
        },
        KafkaRecord {
            key: Some(Bytes::from_static(b"k3")),
            payload: Bytes::from_static(b"three"),
            partition: None,
        },
    ];
    h.write(recs).await.expect("write");
    h.pre_commit(1).await.expect("flush");
    let got = broker.committed("out");
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.contains(&(2, 0, Some("k1".into()), Some("one".into()))),
        "{got:?}"
    );
    assert!(got.contains(&(1, 0, None, Some("two".into()))), "{got:?}");
    assert!(got
        .iter()
        .any(|r| r.2.as_deref() == Some("k3") && r.3.as_deref() == Some("three")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_commits_a_transaction_per_checkpoint() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let (h, _) = started(config(&broker.addr(), "out", Some(dir.path())), None).await;
    assert_eq!(h.transactional_id(), Some("quoll/app/w1/kafka_sink"));
    write(&h, &["a", "b"]).await;
    h.pre_commit(1).await.unwrap();
    assert_eq!(
        wal_files(dir.path()),
        vec!["app-w1.kafka-kafka_sink.wal-00000000000000000001"]
    );
    // Pre-committed, not committed: invisible, though tansu has the records.
    assert!(broker.committed_values("out").is_empty());
    assert_eq!(broker.uncommitted("out").len(), 2);
    h.commit(1).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["a", "b"]);
    assert!(wal_files(dir.path()).is_empty());

    write(&h, &["c"]).await;
    assert_eq!(broker.committed_values("out"), vec!["a", "b"]);
    h.pre_commit(2).await.unwrap();
    // A checkpoint without output commits nothing and changes nothing.
    h.commit(2).await.unwrap();
    h.pre_commit(3).await.unwrap();
    h.commit(3).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_after_a_barrier_wait_for_its_outcome() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let (h, _) = started(config(&broker.addr(), "out", Some(dir.path())), None).await;
    write(&h, &["a"]).await;
    h.pre_commit(1).await.unwrap();
    write(&h, &["b"]).await; // held: checkpoint 1's outcome is not known
    assert_eq!(broker.uncommitted("out").len(), 1, "b is not produced yet");
    h.commit(1).await.unwrap();
    assert_eq!(
        broker.committed_values("out"),
        vec!["a"],
        "commit 1 takes only a"
    );
    // Barrier 2 comes before commit 1 (a peer's barrier can overtake it).
    write(&h, &["c"]).await;
    h.pre_commit(2).await.unwrap();
    write(&h, &["d"]).await;
    h.pre_commit(3).await.unwrap();
    h.commit(2).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["a", "b", "c"]);
    h.commit(3).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["a", "b", "c", "d"]);
    assert!(wal_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_checkpoint_carries_its_output_to_the_next() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let (h, _) = started(config(&broker.addr(), "out", Some(dir.path())), None).await;
    write(&h, &["a"]).await;
    h.pre_commit(1).await.unwrap();
    write(&h, &["b"]).await;
    h.abort(1).await.unwrap();
    write(&h, &["c"]).await;
    h.pre_commit(2).await.unwrap();
    assert!(broker.committed_values("out").is_empty());
    h.commit(2).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["a", "b", "c"]);
    assert!(wal_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_barrier_resends_a_committed_checkpoint_once() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = started(config(&broker.addr(), "out", Some(dir.path())), None).await;
    write(&a, &["x"]).await;
    a.pre_commit(1).await.unwrap();
    a.commit(1).await.unwrap();
    write(&a, &["a", "b"]).await;
    a.pre_commit(2).await.unwrap();
    // The worker dies here; the cluster commits checkpoint 2 without it.
    drop(a);
    let (b, r) = started(config(&broker.addr(), "out", Some(dir.path())), Some(2)).await;
    assert_eq!(
        r,
        Recovered {
            marker: Some(1),
            resent_checkpoints: vec![2],
            resent_records: 2,
            discarded_checkpoints: vec![],
        }
    );
    assert_eq!(broker.committed_values("out"), vec!["x", "a", "b"]);
    // tansu keeps the aborted first copies: the reader's rule matters.
    let all: Vec<String> = broker
        .uncommitted("out")
        .into_iter()
        .filter_map(|r| r.3)
        .collect();
    assert_eq!(all, vec!["x", "a", "b", "a", "b"]);
    assert!(wal_files(dir.path()).is_empty());
    // Recovering again changes nothing: the marker says 2 is done.
    let r = b.recover(Some(2)).await.unwrap();
    assert_eq!(r.resent_records, 0);
    assert_eq!(broker.committed_values("out"), vec!["x", "a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_resilience_directory_is_not_fooled_by_an_earlier_runs_marker() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let old = tempfile::tempdir().unwrap();
    let (a, _) = started(config(&broker.addr(), "out", Some(old.path())), None).await;
    for (id, v) in [(1, "old1"), (2, "old2"), (3, "old3")] {
        write(&a, &[v]).await;
        a.pre_commit(id).await.unwrap();
        a.commit(id).await.unwrap();
    }
    drop(a);
    // A new run with the same names in an emptied directory: ids start at
    // 1 again, and the worker dies after checkpoint 1 committed
    // cluster-wide but before its Kafka transaction did.
    let new = tempfile::tempdir().unwrap();
    let (b, _) = started(config(&broker.addr(), "out", Some(new.path())), None).await;
    write(&b, &["new1"]).await;
    b.pre_commit(1).await.unwrap();
    drop(b);
    let (_c, r) = started(config(&broker.addr(), "out", Some(new.path())), Some(1)).await;
    assert_eq!(
        r.marker, None,
        "the earlier run's marker (3) is not this run's"
    );
    assert_eq!(r.resent_checkpoints, vec![1]);
    assert_eq!(
        broker.committed_values("out"),
        vec!["old1", "old2", "old3", "new1"]
    );
}

/// Barrier and commit of checkpoint 1 on `a` (worker w1), then as if the
/// worker died between the Kafka commit and deleting the write-ahead file:
/// the file is put back. Returns its path.
async fn commit_1_and_die_before_deleting_its_file(a: KafkaSinkHandle, dir: &Path) -> PathBuf {
    a.pre_commit(1).await.unwrap();
    let wal = dir.join("app-w1.kafka-kafka_sink.wal-00000000000000000001");
    let kept = std::fs::read(&wal).unwrap();
    a.commit(1).await.unwrap();
    drop(a);
    std::fs::write(&wal, kept).unwrap();
    wal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_kafka_commit_does_not_resend() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = started(config(&broker.addr(), "out", Some(dir.path())), None).await;
    write(&a, &["a", "b"]).await;
    let wal = commit_1_and_die_before_deleting_its_file(a, dir.path()).await;
    let (_b, r) = started(config(&broker.addr(), "out", Some(dir.path())), Some(1)).await;
    assert_eq!(r.marker, Some(1));
    assert_eq!(r.resent_records, 0);
    assert!(r.resent_checkpoints.is_empty());
    assert!(!wal.exists());
    assert_eq!(broker.committed_values("out"), vec!["a", "b"]);
}

/// w1 commits checkpoint 1 while another worker's sink (w2) holds a
/// transaction open on the same partition, and dies before deleting its
/// write-ahead file; w2's transaction is still open when w1 recovers.
/// Recovery must see that checkpoint 1 committed and send nothing again.
/// (tansu applies committed consumer-group offsets only once interleaved
/// transactions have ended, so a sink that read its commits from a group
/// offset saw none here and sent "a1" twice; the commit log's control
/// records are written when the transaction ends.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_interleaved_with_an_open_transaction_is_not_resent() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let (a, _) = started(config(&broker.addr(), "out", Some(dir.path())), None).await;
    let mut other = config(&broker.addr(), "out", Some(other_dir.path()));
    other.worker = "w2".to_string();
    let (b, _) = started(other, None).await;
    write(&a, &["a1"]).await;
    write(&b, &["b1"]).await;
    let wal = commit_1_and_die_before_deleting_its_file(a, dir.path()).await;
    let (_a, r) = started(config(&broker.addr(), "out", Some(dir.path())), Some(1)).await;
    b.pre_commit(1).await.unwrap();
    b.commit(1).await.unwrap();
    assert_eq!(r.marker, Some(1));
    assert_eq!(r.resent_records, 0, "{r:?}");
    assert!(!wal.exists());
    let mut committed = broker.committed_values("out");
    committed.sort();
    assert_eq!(committed, vec!["a1", "b1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_discards_uncommitted_checkpoints() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = started(config(&broker.addr(), "out", Some(dir.path())), None).await;
    write(&a, &["a"]).await;
    a.pre_commit(1).await.unwrap();
    a.commit(1).await.unwrap();
    write(&a, &["b"]).await;
    a.pre_commit(2).await.unwrap();
    write(&a, &["c"]).await;
    // Checkpoint 2 never committed: roll back to 1 (same sink, running).
    let r = a.recover(Some(1)).await.unwrap();
    assert_eq!(r.discarded_checkpoints, vec![2]);
    assert_eq!(r.resent_records, 0);
    assert!(wal_files(dir.path()).is_empty());
    write(&a, &["b2"]).await;
    a.pre_commit(2).await.unwrap();
    a.commit(2).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["a", "b2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_producer_fences_the_old_one() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 1);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut old = config(&broker.addr(), "out", Some(dir_a.path()));
    // tansu drops a fenced producer's connection instead of answering
    // PRODUCER_FENCED: the old sink gives up when its retries time out.
    old.transaction_timeout = Duration::from_secs(4);
    let (a, _) = started(old, None).await;
    write(&a, &["zombie"]).await;
    a.pre_commit(1).await.unwrap();
    // A new incarnation of the same worker and sink starts.
    let (b, _) = started(config(&broker.addr(), "out", Some(dir_b.path())), None).await;
    let e = a.commit(1).await.expect_err("the old producer is fenced");
    assert!(
        matches!(
            e,
            KafkaError::Fenced { .. } | KafkaError::Client { .. } | KafkaError::Failed { .. }
        ),
        "{e:?}"
    );
    assert!(
        a.write(records(&["late"])).await.is_err(),
        "a fenced sink takes nothing more"
    );
    write(&b, &["fresh"]).await;
    b.pre_commit(1).await.unwrap();
    b.commit(1).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["fresh"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_and_a_missing_topic_are_clear_errors() {
    let broker = broker_or_skip!();
    broker.create_topic("out", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&broker.addr(), "out", Some(dir.path()));
    c.max_message_size = 10;
    let (h, _) = started(c, None).await;
    let out = h
        .write(vec![
            record("ok"),
            record("this one is far too long"),
            KafkaRecord {
                key: None,
                payload: Bytes::from_static(b"p9"),
                partition: Some(9),
            },
        ])
        .await
        .unwrap();
    assert_eq!(out.accepted, 1);
    let texts: Vec<String> = out.rejected.iter().map(|e| e.to_string()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    for t in &texts {
        for part in ["sink 'kafka_sink'", "worker 'w1'", "topic 'out'"] {
            assert!(t.contains(part), "{t} lacks {part}");
        }
    }
    assert!(
        texts[0].contains("24 bytes") && texts[0].contains("maximum message size of 10"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].contains("partition 9 does not exist"),
        "{}",
        texts[1]
    );
    h.pre_commit(1).await.unwrap();
    h.commit(1).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["ok"]);

    let h = KafkaSink::spawn(config(&broker.addr(), "missing", None)).unwrap();
    let e = h.recover(None).await.expect_err("missing topic");
    assert!(matches!(e, KafkaError::MissingTopic { .. }), "{e:?}");
    assert!(e.to_string().contains("topic 'missing'"), "{e}");
    assert!(
        h.write(records(&["x"])).await.is_err(),
        "unusable until recovered"
    );

    let h = KafkaSink::spawn(config("no-such-host.invalid:1", "out", None)).unwrap();
    let e = h.recover(None).await.expect_err("bad address");
    assert!(matches!(e, KafkaError::BadBrokerAddress { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_delays_but_does_not_break_exactly_once() {
    let proxy_port = common::free_port();
    let port = common::free_port();
    let Some(broker) = common::Broker::start_advertising(port, proxy_port) else {
        eprintln!("\n*** SKIPPED: no Kafka broker binary (see scripts/kafka-broker.sh) ***\n");
        return;
    };
    let mut proxy = common::Proxy::new(proxy_port, port);
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let via_proxy = format!("127.0.0.1:{proxy_port}");
    let (h, _) = started(config(&via_proxy, "out", Some(dir.path())), None).await;
    write(&h, &["a"]).await;
    h.pre_commit(1).await.unwrap();
    h.commit(1).await.unwrap();

    proxy.cut();
    write(&h, &["b", "c"]).await;
    let pending = {
        let h = h.clone();
        tokio::spawn(async move { h.pre_commit(2).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!pending.is_finished(), "pre-commit waits for the brokers");
    proxy.restore();
    tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("pre-commit finishes once the brokers are back")
        .unwrap()
        .expect("pre-commit");
    h.commit(2).await.unwrap();
    // The reader talks to the broker directly, not through the proxy.
    assert_eq!(broker.committed_values("out"), vec!["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_fails_the_sink_until_a_rollback_recovers_it() {
    let proxy_port = common::free_port();
    let port = common::free_port();
    let Some(broker) = common::Broker::start_advertising(port, proxy_port) else {
        eprintln!("\n*** SKIPPED: no Kafka broker binary (see scripts/kafka-broker.sh) ***\n");
        return;
    };
    let mut proxy = common::Proxy::new(proxy_port, port);
    broker.create_topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&format!("127.0.0.1:{proxy_port}"), "out", Some(dir.path()));
    // Records wait at most 3 s for a broker, then their delivery fails.
    c.transaction_timeout = Duration::from_secs(3);
    let (h, _) = started(c, None).await;
    write(&h, &["a"]).await;
    h.pre_commit(1).await.unwrap();
    h.commit(1).await.unwrap();

    proxy.cut();
    write(&h, &["b", "c"]).await;
    // b and c time out. Aborting their transaction needs the broker to
    // bump the producer's epoch, which tansu can't: the sink fails.
    let e = tokio::time::timeout(Duration::from_secs(60), h.pre_commit(2))
        .await
        .expect("pre-commit gives up")
        .expect_err("no broker");
    assert!(e.to_string().contains("kafka_sink"), "{e}");
    proxy.restore();
    let e = h
        .write(records(&["x"]))
        .await
        .expect_err("failed until recovered");
    assert!(e.to_string().contains("must be recovered"), "{e}");
    // The worker rolls back to checkpoint 1 and replays b and c.
    let r = h.recover(Some(1)).await.expect("recover");
    assert_eq!(r.resent_records, 0);
    write(&h, &["b", "c", "d"]).await;
    h.pre_commit(2).await.unwrap();
    h.commit(2).await.unwrap();
    assert_eq!(broker.committed_values("out"), vec!["a", "b", "c", "d"]);
}
