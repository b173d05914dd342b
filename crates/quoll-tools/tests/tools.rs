//! End-to-end tests of the tools over real loopback sockets.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quoll_core::external::{encode_frame, ClusterStatus, ExternalCodec, MessageType};
use quoll_core::frame::BlockingFramedRead;
mod common;

use common::run_tool;
use quoll_tools::run_with_io;

struct ChanWriter(mpsc::Sender<String>);

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let _ = self.0.send(String::from_utf8_lossy(b).into_owned());
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

struct Receiving {
    addr: String,
    handle: JoinHandle<i32>,
    rx: mpsc::Receiver<String>,
    text: String,
}

impl Receiving {
    fn start(extra: &[&str]) -> Receiving {
        let mut args = strings(&[
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--report-interval",
            "0",
        ]);
        args.extend(strings(extra));
        let (tx, rx) = mpsc::channel();
        let handle =
            std::thread::spawn(move || run_with_io(args, &mut Vec::new(), &mut ChanWriter(tx)));
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let piece = rx
                .recv_timeout(deadline - Instant::now())
                .expect("receiver did not start");
            text.push_str(&piece);
            if let Some(i) = text.find("listening on ") {
                if let Some(j) = text[i..].find('\n') {
                    let addr = text[i + "listening on ".len()..i + j].trim().to_string();
                    return Receiving {
                        addr,
                        handle,
                        rx,
                        text,
                    };
                }
            }
        }
    }

    fn finish(mut self) -> (i32, String) {
        let code = self.handle.join().expect("receiver panicked");
        while let Ok(p) = self.rx.try_recv() {
            self.text.push_str(&p);
        }
        (code, self.text)
    }
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

fn lines_file(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        v.extend_from_slice(format!("message number {i}, with some text\n").as_bytes());
    }
    v
}

#[test]
fn send_lines_receive_raw_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = lines_file(5000);
    let input = write_file(dir.path(), "in.txt", &data);
    let output = dir.path().join("out.txt");
    let r = Receiving::start(&[
        "--output",
        output.to_str().unwrap(),
        "--expect",
        "5000",
        "--timeout",
        "30",
    ]);
    let (code, out, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--framing",
        "lines",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("sent 5000 messages ({} bytes)", data.len())),
        "{out}"
    );
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("received 5000 messages ({} bytes)", data.len())),
        "{text}"
    );
    assert_eq!(std::fs::read(&output).unwrap(), data);
}

#[test]
fn send_framed_receive_framed_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = b"alpha\nbeta\n\ngamma with spaces\r\nlast line".to_vec();
    let input = write_file(dir.path(), "in.txt", &data);
    let output = dir.path().join("out.bin");
    let r = Receiving::start(&[
        "--output",
        output.to_str().unwrap(),
        "--framing",
        "framed",
        "--framed-newline",
        "--expect",
        "5",
        "--timeout",
        "30",
    ]);
    let (code, out, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--framing",
        "framed",
        "--batch-size",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    // 5 messages, payload bytes 5+4+0+17+9 = 35, plus 5 headers.
    assert!(out.contains("sent 5 messages (55 bytes)"), "{out}");
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("received 5 messages (55 bytes)"), "{text}");
    assert_eq!(
        std::fs::read(&output).unwrap(),
        b"alpha\nbeta\n\ngamma with spaces\nlast line\n"
    );
}

#[test]
fn raw_framed_file_sent_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = Vec::new();
    for m in [&b"one"[..], b"", b"\x00\x01binary\xff"] {
        data.extend_from_slice(&(m.len() as u32).to_be_bytes());
        data.extend_from_slice(m);
    }
    let input = write_file(dir.path(), "in.bin", &data);
    let output = dir.path().join("out.bin");
    let r = Receiving::start(&[
        "--output",
        output.to_str().unwrap(),
        "--expect",
        "3",
        "--framing",
        "framed",
    ]);
    let (code, out, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--framing",
        "raw-framed",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("sent 3 messages ({} bytes)", data.len())),
        "{out}"
    );
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    assert_eq!(std::fs::read(&output).unwrap(), b"one\x00\x01binary\xff");
}

#[test]
fn messages_repeat_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in.txt", b"a\nb\nc\n");
    let output = dir.path().join("out.txt");
    let r = Receiving::start(&[
        "--output",
        output.to_str().unwrap(),
        "--idle-timeout",
        "1",
        "--timeout",
        "30",
    ]);
    let (code, out, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--framing",
        "lines",
        "--messages",
        "7",
        "--batch-size",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sent 7 messages (14 bytes)"), "{out}");
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("received 7 messages"), "{text}");
    assert_eq!(std::fs::read(&output).unwrap(), b"a\nb\nc\na\nb\nc\na\n");
}

#[test]
fn several_connections_keep_lines_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    let mut all_lines = Vec::new();
    for w in 0..3 {
        let mut data = Vec::new();
        for i in 0..20000 {
            let line = format!("worker {w} line {i} {}\n", "x".repeat(i % 37));
            all_lines.push(line.trim_end_matches('\n').to_string());
            data.extend_from_slice(line.as_bytes());
        }
        inputs.push(write_file(dir.path(), &format!("in{w}.txt"), &data));
    }
    let output = dir.path().join("out.txt");
    let r = Receiving::start(&[
        "--output",
        output.to_str().unwrap(),
        "--expect",
        "60000",
        "--timeout",
        "60",
    ]);
    let senders: Vec<_> = inputs
        .iter()
        .map(|input| {
            let (addr, input) = (r.addr.clone(), input.clone());
            std::thread::spawn(move || {
                run_tool(&[
                    "send",
                    "--host",
                    &addr,
                    "--file",
                    &input,
                    "--framing",
                    "lines",
                ])
            })
        })
        .collect();
    for s in senders {
        let (code, _, err) = s.join().unwrap();
        assert_eq!(code, 0, "{err}");
    }
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    let got = String::from_utf8(std::fs::read(&output).unwrap()).unwrap();
    let mut got: Vec<String> = got.lines().map(str::to_string).collect();
    got.sort();
    all_lines.sort();
    assert_eq!(got.len(), all_lines.len());
    assert!(got == all_lines, "lines differ");
}

#[test]
fn count_only_and_timeout_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in.txt", &lines_file(100));
    let r = Receiving::start(&["--count-only", "--expect", "1000", "--timeout", "1.5"]);
    let (code, _, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--framing",
        "lines",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, text) = r.finish();
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("received 100 messages"), "{text}");
    assert!(
        text.contains(
            "quoll receive: error: timed out after 1.5 s with 100 of 1000 expected messages"
        ),
        "{text}"
    );
}

#[test]
fn idle_timeout_without_expect_is_success() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in.txt", &lines_file(10));
    let r = Receiving::start(&["--count-only", "--idle-timeout", "0.5"]);
    let (code, _, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--framing",
        "lines",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("received 10 messages"), "{text}");
}

#[test]
fn timeout_without_expect_and_without_data_is_success() {
    let r = Receiving::start(&["--count-only", "--timeout", "0.3"]);
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("received 0 messages (0 bytes)"), "{text}");
}

#[test]
fn rate_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in.txt", &lines_file(300));
    let r = Receiving::start(&["--count-only", "--expect", "300", "--timeout", "30"]);
    let t0 = Instant::now();
    let (code, out, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--framing",
        "lines",
        "--rate",
        "1000",
    ]);
    let elapsed = t0.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sent 300 messages"), "{out}");
    // 300 messages at 1000/s take about 0.3 s; only check it is not much faster.
    assert!(
        elapsed >= Duration::from_millis(200),
        "sent too fast: {elapsed:?}"
    );
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
}

fn free_closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

#[test]
fn connect_failure_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in.txt", b"x\n");
    let addr = free_closed_port();
    let t0 = Instant::now();
    let (code, _, err) = run_tool(&[
        "send",
        "--host",
        &addr,
        "--file",
        &input,
        "--connect-timeout",
        "0.5",
    ]);
    assert_eq!(code, 1);
    assert!(t0.elapsed() >= Duration::from_millis(400), "did not retry");
    assert!(
        err.starts_with(&format!(
            "quoll send: error: could not connect to {addr} within 0.5 s"
        )),
        "{err}"
    );
    assert!(err.contains("--connect-timeout"), "{err}");

    let (code, _, err) = run_tool(&[
        "send",
        "--host",
        &addr,
        "--file",
        &input,
        "--no-wait-connect",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("could not connect to {addr} (one attempt)")),
        "{err}"
    );

    let (code, _, err) = run_tool(&["status", &addr, "--timeout", "0.5"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("quoll status: error: could not connect to {addr}")),
        "{err}"
    );
    assert!(err.contains("--external"), "{err}");
}

#[test]
fn send_file_errors() {
    let (code, _, err) = run_tool(&[
        "send",
        "--host",
        "127.0.0.1:1",
        "--file",
        "/nonexistent/quoll-input",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read /nonexistent/quoll-input") && err.contains("--file"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(dir.path(), "bad.bin", &[0, 0, 0, 9, b'x']);
    let (code, _, err) = run_tool(&[
        "send",
        "--host",
        "127.0.0.1:1",
        "--file",
        &bad,
        "--framing",
        "raw-framed",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("announces 9 bytes") && err.contains("--framing framed"),
        "{err}"
    );
    let empty = write_file(dir.path(), "empty.txt", b"");
    let (code, _, err) = run_tool(&[
        "send",
        "--host",
        "127.0.0.1:1",
        "--file",
        &empty,
        "--repeat",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no message"), "{err}");
}

#[test]
fn receive_bind_failure() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (code, _, err) = run_tool(&[
        "receive",
        "--listen",
        &addr,
        "--count-only",
        "--timeout",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("quoll receive: error: cannot listen on {addr}")),
        "{err}"
    );
}

/// A fake worker external channel: answers each request with `reply`
/// (None: close the connection). Returns its address and the types it saw.
type Seen = Vec<(u16, Vec<u8>)>;

fn fake_external(reply: Option<(MessageType, String)>) -> (String, JoinHandle<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut frames = BlockingFramedRead::new(s, ExternalCodec::default());
        let mut seen = Vec::new();
        if let Some(f) = frames.next_frame().unwrap() {
            seen.push((f.msg_type, f.payload));
            if let Some((ty, payload)) = &reply {
                let s = frames.get_mut();
                s.write_all(&encode_frame(*ty, payload)).unwrap();
                // Wait for the client to go away.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            }
        }
        seen
    });
    (addr, h)
}

#[test]
fn status_ready() {
    let status = ClusterStatus {
        worker_count: 2,
        worker_names: vec!["initializer".into(), "worker-1".into()],
        processing_messages: true,
    };
    let (addr, h) = fake_external(Some((
        MessageType::ClusterStatusResponse,
        serde_json::to_string(&status).unwrap(),
    )));
    let (code, out, err) = run_tool(&["status", &addr, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), serde_json::to_string(&status).unwrap());
    assert_eq!(h.join().unwrap(), vec![(9u16, vec![])]);

    let (addr, h) = fake_external(Some((
        MessageType::ClusterStatusResponse,
        serde_json::to_string(&status).unwrap(),
    )));
    let (code, out, err) = run_tool(&["status", &addr]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "worker_count: 2\nworker_names: initializer, worker-1\nprocessing_messages: true\n"
    );
    h.join().unwrap();
}

#[test]
fn status_keys_prints_the_state_entities() {
    let json = r#"{"2":["apple","pear"],"5":[]}"#;
    let (addr, h) = fake_external(Some((MessageType::StateEntityQueryResponse, json.into())));
    let (code, out, err) = run_tool(&["status", &addr, "--keys"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "stage 2: 2 keys: apple, pear\nstage 5: 0 keys: \n");
    assert_eq!(h.join().unwrap(), vec![(17u16, vec![])]);

    let (addr, h) = fake_external(Some((MessageType::StateEntityQueryResponse, json.into())));
    let (code, out, err) = run_tool(&["status", &addr, "--keys", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), json);
    h.join().unwrap();

    // A reply of another type is named.
    let (addr, h) = fake_external(Some((MessageType::ReportStatus, "unsupported".into())));
    let (code, _, err) = run_tool(&["status", &addr, "--keys"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("answered the state-entity query with message type 16"),
        "{err}"
    );
    h.join().unwrap();
}

#[test]
fn status_not_initialized_and_bad_replies() {
    let (addr, h) = fake_external(Some((
        MessageType::ClusterStatusNotInitialized,
        String::new(),
    )));
    let (code, out, _) = run_tool(&["status", &addr]);
    assert_eq!(code, 2);
    assert_eq!(out.trim(), "not initialized");
    h.join().unwrap();

    let (addr, h) = fake_external(Some((
        MessageType::ClusterStatusResponse,
        "{\"worker_count\": 1}".into(),
    )));
    let (code, _, err) = run_tool(&["status", &addr]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid cluster-status payload"), "{err}");
    h.join().unwrap();

    let (addr, h) = fake_external(Some((MessageType::Print, "huh".into())));
    let (code, _, err) = run_tool(&["status", &addr]);
    assert_eq!(code, 1);
    assert!(err.contains("message type 1"), "{err}");
    h.join().unwrap();

    let (addr, h) = fake_external(None);
    let (code, _, err) = run_tool(&["status", &addr]);
    assert_eq!(code, 1);
    assert!(
        err.contains("closed the connection without answering"),
        "{err}"
    );
    h.join().unwrap();
}

#[test]
fn status_times_out_on_a_silent_worker() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t0 = Instant::now();
    let (code, _, err) = run_tool(&["status", &addr, "--timeout", "0.3"]);
    assert_eq!(code, 1);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        err.contains("did not answer") && err.contains("--timeout"),
        "{err}"
    );
    drop(l);
}

#[test]
fn shutdown_outcomes() {
    let (addr, h) = fake_external(None);
    let (code, out, err) = run_tool(&["shutdown", &addr, "--message", "bye"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("accepted the clean shutdown and closed the connection"),
        "{out}"
    );
    assert_eq!(h.join().unwrap(), vec![(3u16, b"bye".to_vec())]);

    let (addr, h) = fake_external(Some((MessageType::ReportStatus, "shutting down".into())));
    let (code, out, err) = run_tool(&["shutdown", &addr]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("replied with ReportStatus (16): shutting down"),
        "{out}"
    );
    h.join().unwrap();
}

/// 4-byte big-endian length-prefixed frames.
fn frame_all(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in payloads {
        v.extend_from_slice(&(p.len() as u32).to_be_bytes());
        v.extend_from_slice(p);
    }
    v
}

/// Splits `data` into frames; panics on a torn frame.
fn parse_frames(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        assert!(data.len() >= 4, "torn header: {} bytes left", data.len());
        let n = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        assert!(data.len() >= 4 + n, "torn frame: {n} announced");
        out.push(data[4..4 + n].to_vec());
        data = &data[4 + n..];
    }
    out
}

#[test]
fn keep_headers_writes_whole_frames_from_several_connections() {
    // Binary payloads full of newline bytes, of many sizes, from three
    // connections at once: the output must be a clean frame sequence in
    // which each connection's frames keep their order.
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    let mut per_conn = Vec::new();
    for c in 0..3u8 {
        let payloads: Vec<Vec<u8>> = (0..4000usize)
            .map(|i| {
                let mut p = vec![c, b'\n'];
                p.extend_from_slice(&(i as u32).to_be_bytes());
                p.extend(std::iter::repeat_n(b'\n', i % 53));
                p
            })
            .collect();
        inputs.push(write_file(
            dir.path(),
            &format!("in{c}.bin"),
            &frame_all(&payloads),
        ));
        per_conn.push(payloads);
    }
    let output = dir.path().join("out.bin");
    let r = Receiving::start(&[
        "--output",
        output.to_str().unwrap(),
        "--framing",
        "framed",
        "--keep-headers",
        "--expect",
        "12000",
        "--timeout",
        "60",
    ]);
    let senders: Vec<_> = inputs
        .iter()
        .map(|input| {
            let (addr, input) = (r.addr.clone(), input.clone());
            std::thread::spawn(move || {
                run_tool(&[
                    "send",
                    "--host",
                    &addr,
                    "--file",
                    &input,
                    "--framing",
                    "raw-framed",
                    "--batch-size",
                    "7",
                ])
            })
        })
        .collect();
    for s in senders {
        let (code, _, err) = s.join().unwrap();
        assert_eq!(code, 0, "{err}");
    }
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    let frames = parse_frames(&std::fs::read(&output).unwrap());
    assert_eq!(frames.len(), 12000);
    for (c, sent) in per_conn.iter().enumerate() {
        let got: Vec<&Vec<u8>> = frames.iter().filter(|f| f[0] == c as u8).collect();
        assert_eq!(got.len(), sent.len(), "connection {c}");
        assert!(got.iter().zip(sent).all(|(a, b)| *a == b), "connection {c}");
    }
}

#[test]
fn keep_headers_and_newline_need_framed() {
    let (code, _, err) = run_tool(&["receive", "--listen", "127.0.0.1:0", "--keep-headers"]);
    assert_eq!(code, 2);
    assert!(err.contains("--framing framed"), "{err}");
    let (code, _, err) = run_tool(&[
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--framing",
        "framed",
        "--keep-headers",
        "--framed-newline",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--framed-newline"), "{err}");
}

#[test]
fn giles_style_send_skips_blank_lines_paces_batches_and_logs() {
    // Giles' text mode: blank lines are not messages, --max-messages stops
    // at the end of the file, one batch per interval, a sent log.
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in.txt", b"one\n\ntwo\r\n\r\nthree\nfour\n\n");
    let output = dir.path().join("out.bin");
    let sent_log = dir.path().join("sent.txt");
    let r = Receiving::start(&[
        "--output",
        output.to_str().unwrap(),
        "--framing",
        "framed",
        "--keep-headers",
        "--idle-timeout",
        "1",
        "--timeout",
        "30",
    ]);
    let t0 = Instant::now();
    let (code, out, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--skip-empty",
        "--max-messages",
        "1000",
        "--batch-size",
        "1",
        "--batch-interval",
        "0.1",
        "--sent-log",
        sent_log.to_str().unwrap(),
    ]);
    let elapsed = t0.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sent 4 messages (31 bytes)"), "{out}");
    // Four batches, 0.1 s apart: at least 0.3 s.
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    let frames = parse_frames(&std::fs::read(&output).unwrap());
    assert_eq!(
        frames,
        vec![
            b"one".to_vec(),
            b"two".to_vec(),
            b"three".to_vec(),
            b"four".to_vec()
        ]
    );
    let log = std::fs::read_to_string(&sent_log).unwrap();
    let entries: Vec<(u128, &str)> = log
        .lines()
        .map(|l| {
            let (ns, payload) = l.split_once(", ").unwrap();
            (ns.parse().unwrap(), payload)
        })
        .collect();
    assert_eq!(
        entries.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec!["one", "two", "three", "four"]
    );
    assert!(
        entries.windows(2).all(|w| w[1].0 >= w[0].0 + 90_000_000),
        "{log}"
    );
}

#[test]
fn fixed_size_messages_sent_as_they_are() {
    // Giles' --binary --msg-size: whole 9-byte frames read from the file.
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![b'a' + i % 26, 0, 0, 0, i]).collect();
    let data = frame_all(&payloads);
    let input = write_file(dir.path(), "votes.msg", &data);
    let output = dir.path().join("out.bin");
    let r = Receiving::start(&[
        "--output",
        output.to_str().unwrap(),
        "--framing",
        "framed",
        "--keep-headers",
        "--expect",
        "120",
        "--timeout",
        "30",
    ]);
    let (code, out, err) = run_tool(&[
        "send",
        "--host",
        &r.addr,
        "--file",
        &input,
        "--framing",
        "fixed",
        "--msg-size",
        "9",
        "--max-messages",
        "120",
        "--repeat",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sent 120 messages (1080 bytes)"), "{out}");
    let (code, text) = r.finish();
    assert_eq!(code, 0, "{text}");
    let got = std::fs::read(&output).unwrap();
    let mut want = Vec::new();
    for k in 0..120 {
        want.extend_from_slice(&data[(k % 50) * 9..(k % 50) * 9 + 9]);
    }
    assert_eq!(got, want);
}
