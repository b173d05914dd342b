//! `quoll send --connector` against a fake worker written here with
//! `quoll_core::connector`: handshake, credits, acknowledgements, RESTART,
//! lost connections and errors.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use quoll_core::connector::{self, ConnectorCodec, ConnectorMessage, NO_POSITION};
use quoll_core::frame::{BlockingFramedRead, ReadError};
mod common;

use common::run_tool;

fn send_args(addr: &str, file: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["send", "--connector", "--host", addr, "--file"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(file.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn lines_file(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("in.txt");
    let text: String = (1..=n).map(|i| format!("line-{i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// One client connection as the fake worker sees it.
struct Peer {
    frames: BlockingFramedRead<TcpStream, ConnectorCodec>,
    /// The worker's count of the client's credits (one per NOTIFY or
    /// MESSAGE; a client never spends more than it was given).
    credits: i64,
}

impl Peer {
    fn accept(listener: &TcpListener) -> Peer {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Peer {
            frames: BlockingFramedRead::new(stream, ConnectorCodec::default()),
            credits: 0,
        }
    }

    /// The next frame, `None` once the client closed.
    fn recv(&mut self) -> Option<ConnectorMessage> {
        let m = match self.frames.next_frame() {
            Ok(m) => m?,
            Err(ReadError::Truncated { .. }) => panic!("the client closed mid-frame"),
            Err(ReadError::Io(e)) => panic!("the client went silent: {e}"),
            Err(ReadError::Protocol(e)) => panic!("the client sent a bad frame: {e}"),
        };
        if matches!(
            m,
            ConnectorMessage::Notify { .. } | ConnectorMessage::Message { .. }
        ) {
            self.credits -= 1;
            assert!(
                self.credits >= 0,
                "the client spent credits it did not have"
            );
        }
        Some(m)
    }

    fn send(&mut self, m: ConnectorMessage) {
        self.frames
            .get_mut()
            .write_all(&m.encode().unwrap())
            .unwrap();
    }

    /// Expects HELLO with `cookie`; answers OK(credits).
    fn handshake(&mut self, cookie: &str, credits: u32) {
        match self.recv() {
            Some(ConnectorMessage::Hello {
                version,
                cookie: c,
                program_name,
                ..
            }) => {
                assert_eq!(version, connector::PROTOCOL_VERSION);
                assert_eq!(c, cookie);
                assert_eq!(program_name, "quoll-send");
            }
            other => panic!("expected HELLO, got {other:?}"),
        }
        self.credits = credits as i64;
        self.send(ConnectorMessage::Ok {
            initial_credits: credits,
        });
    }

    /// Expects NOTIFY of `stream`; returns the position the client asked for.
    fn notify(&mut self, stream: u64) -> u64 {
        match self.recv() {
            Some(ConnectorMessage::Notify {
                stream_id,
                point_of_ref,
                ..
            }) => {
                assert_eq!(stream_id, stream);
                point_of_ref
            }
            other => panic!("expected NOTIFY, got {other:?}"),
        }
    }

    fn notify_ack(&mut self, success: bool, stream_id: u64, point_of_ref: u64) {
        self.send(ConnectorMessage::NotifyAck {
            success,
            stream_id,
            point_of_ref,
        });
    }

    /// Expects a MESSAGE of `stream`; returns its id and payload.
    fn message(&mut self, stream: u64) -> (u64, String) {
        match self.recv() {
            Some(ConnectorMessage::Message {
                stream_id,
                message_id,
                key,
                payload,
                ..
            }) => {
                assert_eq!(stream_id, stream);
                assert!(key.is_empty());
                (message_id, String::from_utf8(payload.to_vec()).unwrap())
            }
            other => panic!("expected MESSAGE, got {other:?}"),
        }
    }

    /// Reads messages and EOS, granting credits as a worker does
    /// (max_credits, refill_credits) and acknowledging every position at
    /// once (a worker without resilience). Returns what arrived.
    fn serve_to_eos(&mut self, stream: u64, max: u32, refill: u32) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        let mut last = NO_POSITION;
        loop {
            match self.recv() {
                Some(ConnectorMessage::Message {
                    stream_id,
                    message_id,
                    payload,
                    ..
                }) => {
                    assert_eq!(stream_id, stream);
                    last = message_id;
                    got.push((message_id, String::from_utf8(payload.to_vec()).unwrap()));
                    if self.credits <= refill as i64 {
                        let credits = (max as i64 - self.credits) as u32;
                        self.credits = max as i64;
                        self.send(ConnectorMessage::Ack {
                            credits,
                            acks: vec![(stream, last)],
                        });
                    }
                }
                Some(ConnectorMessage::Eos { stream_id }) => {
                    assert_eq!(stream_id, stream);
                    self.send(ConnectorMessage::Ack {
                        credits: 0,
                        acks: vec![(stream, last)],
                    });
                    return got;
                }
                other => panic!("expected MESSAGE or EOS, got {other:?}"),
            }
        }
    }

    /// Waits until the client closes.
    fn expect_close(&mut self) {
        if let Some(m) = self.recv() {
            panic!("expected the client to close, got {m:?}");
        }
    }
}

fn listen() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

fn worker<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::spawn(f)
}

fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
    range.map(|i| (i, format!("line-{i}"))).collect()
}

#[test]
fn restart_resends_from_the_acknowledged_point() {
    let dir = tempfile::tempdir().unwrap();
    let file = lines_file(dir.path(), 30);
    let (listener, addr) = listen();
    let w = worker(move || {
        // First session: credits for NOTIFY + 14 messages, an ACK of 10,
        // then RESTART.
        let mut p = Peer::accept(&listener);
        p.handshake("c", 15);
        assert_eq!(p.notify(7), NO_POSITION);
        p.notify_ack(true, 7, NO_POSITION);
        let mut first = Vec::new();
        for _ in 0..14 {
            first.push(p.message(7));
            if first.len() == 10 {
                p.send(ConnectorMessage::Ack {
                    credits: 0,
                    acks: vec![(7, 10), (99, 1000)],
                });
            }
        }
        p.send(ConnectorMessage::Restart {
            address: String::new(),
        });
        drop(p);
        // Second session: the client asks for its acknowledged point, the
        // worker confirms it, and everything after it arrives.
        let mut p = Peer::accept(&listener);
        p.handshake("c", 5);
        assert_eq!(p.notify(7), 10);
        p.notify_ack(true, 7, 10);
        let second = p.serve_to_eos(7, 5, 2);
        p.expect_close();
        (first, second)
    });
    let (code, out, err) = run_tool(&send_args(
        &addr,
        &file,
        &[
            "--cookie",
            "c",
            "--stream-id",
            "7",
            "--reconnect-timeout",
            "10",
        ],
    ));
    assert_eq!(code, 0, "{out}{err}");
    let (first, second) = w.join().unwrap();
    assert_eq!(first, expected(1..=14));
    assert_eq!(second, expected(11..=30));
    assert!(
        out.starts_with("quoll send: sent 30 messages (")
            && out.contains("all acknowledged (4 resent after restarts)"),
        "{out}"
    );
    assert!(err.contains("the worker asked for a restart"), "{err}");
}

#[test]
fn a_lost_connection_and_a_busy_stream_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let file = lines_file(dir.path(), 20);
    let (listener, addr) = listen();
    let w = worker(move || {
        // Credits for NOTIFY + 5 messages; 3 acknowledged; then the
        // connection just drops.
        let mut p = Peer::accept(&listener);
        p.handshake("cookie", 6);
        assert_eq!(p.notify(1), NO_POSITION);
        p.notify_ack(true, 1, NO_POSITION);
        let first: Vec<_> = (0..5).map(|_| p.message(1)).collect();
        p.send(ConnectorMessage::Ack {
            credits: 0,
            acks: vec![(1, 3)],
        });
        drop(p);
        // The stream is still "open" elsewhere: refused once.
        let mut p = Peer::accept(&listener);
        p.handshake("cookie", 6);
        assert_eq!(p.notify(1), 3);
        p.notify_ack(false, 1, 3);
        p.expect_close();
        // Then accepted, resuming after 3.
        let mut p = Peer::accept(&listener);
        p.handshake("cookie", 4);
        assert_eq!(p.notify(1), 3);
        p.notify_ack(true, 1, 3);
        let second = p.serve_to_eos(1, 4, 1);
        p.expect_close();
        (first, second)
    });
    let (code, out, err) = run_tool(&send_args(&addr, &file, &["--reconnect-timeout", "10"]));
    assert_eq!(code, 0, "{out}{err}");
    let (first, second) = w.join().unwrap();
    assert_eq!(first, expected(1..=5));
    assert_eq!(second, expected(4..=20));
    assert!(
        out.contains("sent 20 messages") && out.contains("(2 resent after restarts)"),
        "{out}"
    );
    assert!(err.contains("refused stream 1"), "{err}");
}

#[test]
fn a_worker_that_forgot_the_stream_gets_everything_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = lines_file(dir.path(), 6);
    let (listener, addr) = listen();
    let w = worker(move || {
        let mut p = Peer::accept(&listener);
        p.handshake("cookie", 4);
        p.notify(1);
        p.notify_ack(true, 1, NO_POSITION);
        let first: Vec<_> = (0..3).map(|_| p.message(1)).collect();
        p.send(ConnectorMessage::Restart {
            address: String::new(),
        });
        drop(p);
        let mut p = Peer::accept(&listener);
        p.handshake("cookie", 3);
        p.notify(1);
        // Never seen (a worker restarted without resilience): from the start.
        p.notify_ack(true, 1, NO_POSITION);
        let second = p.serve_to_eos(1, 3, 1);
        p.expect_close();
        (first, second)
    });
    let (code, out, err) = run_tool(&send_args(&addr, &file, &[]));
    assert_eq!(code, 0, "{out}{err}");
    let (first, second) = w.join().unwrap();
    assert_eq!(first, expected(1..=3));
    assert_eq!(second, expected(1..=6));
    assert!(
        out.contains("sent 6 messages") && out.contains("(3 resent after restarts)"),
        "{out}"
    );
}

#[test]
fn bad_cookie_is_rejected_with_the_workers_text() {
    let dir = tempfile::tempdir().unwrap();
    let file = lines_file(dir.path(), 3);
    let (listener, addr) = listen();
    let w = worker(move || {
        let mut p = Peer::accept(&listener);
        let got = match p.recv() {
            Some(ConnectorMessage::Hello { cookie, .. }) => cookie,
            other => panic!("expected HELLO, got {other:?}"),
        };
        assert_eq!(got, "wrong");
        p.send(ConnectorMessage::error(connector::bad_cookie_error(
            &got, "right",
        )));
    });
    let (code, out, err) = run_tool(&send_args(&addr, &file, &["--cookie", "wrong"]));
    w.join().unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("quoll send: error: the worker at")
            && err.contains("sent ERROR: Bad cookie: wrong, wanted: right; give the source connector's cookie with --cookie"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

#[test]
fn messages_beyond_the_file_go_round_with_increasing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.txt");
    std::fs::write(&path, "a\nb\nc").unwrap();
    let (listener, addr) = listen();
    let w = worker(move || {
        let mut p = Peer::accept(&listener);
        p.handshake("cookie", 3);
        p.notify(5);
        p.notify_ack(true, 5, NO_POSITION);
        let got = p.serve_to_eos(5, 3, 0);
        p.expect_close();
        got
    });
    let (code, out, err) = run_tool(&send_args(
        &addr,
        &path,
        &[
            "--framing",
            "lines",
            "--messages",
            "7",
            "--stream-id",
            "5",
            "--stream-name",
            "s",
        ],
    ));
    assert_eq!(code, 0, "{out}{err}");
    let got = w.join().unwrap();
    let want: Vec<(u64, String)> = ["a\n", "b\n", "c\n", "a\n", "b\n", "c\n", "a\n"]
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u64 + 1, s.to_string()))
        .collect();
    assert_eq!(got, want);
    assert!(out.contains("sent 7 messages (14 bytes)"), "{out}");
}

#[test]
fn a_missing_final_ack_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = lines_file(dir.path(), 2);
    let (listener, addr) = listen();
    let w = worker(move || {
        let mut p = Peer::accept(&listener);
        p.handshake("cookie", 10);
        p.notify(1);
        p.notify_ack(true, 1, NO_POSITION);
        p.message(1);
        p.message(1);
        assert!(matches!(
            p.recv(),
            Some(ConnectorMessage::Eos { stream_id: 1 })
        ));
        // No ACK: the client gives up.
        p.expect_close();
    });
    let (code, out, err) = run_tool(&send_args(&addr, &file, &["--reconnect-timeout", "0.5"]));
    w.join().unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("sent no final acknowledgement within 0.5 s"),
        "{err}"
    );
}

#[test]
fn connector_flags_need_connector() {
    let (code, _, err) = run_tool(&["send", "--host", "h:1", "--file", "f", "--cookie", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--connector"), "{err}");
}
