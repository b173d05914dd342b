//! Link authentication: a mutual challenge-response over fresh nonces, so
//! that nothing a control or data link says is acted on before both ends
//! have shown they hold the cluster secret.
//!
//! ```text
//!  initiator (connects)                          acceptor (listens)
//!  ── Hello { purpose, nonce_i } ──────────────▶
//!                                  ◀──────────── Challenge { nonce_a, proof_a }
//!      proof_a = HMAC(secret, "quoll acceptor" | purpose | nonce_i | nonce_a)
//!  ── Proof { proof_i } ───────────────────────▶
//!      proof_i = HMAC(secret, "quoll initiator" | purpose | nonce_i | nonce_a)
//!                                  ◀──────────── Verdict { accepted, reason }
//! ```
//!
//! Each side proves itself over the other's fresh nonce, so a recorded
//! handshake replayed on a new connection fails (the other side's nonce is
//! new), and the two proofs differ by their labels, so one can't be
//! reflected as the other. The purpose (control or data link) is bound in,
//! so a proof for one kind of link is worthless on the other. HMAC-SHA256
//! with constant-time comparison; nonces are 32 random bytes the caller
//! supplies (this module does no I/O and draws no randomness).
//!
//! What it does not do: it authenticates the start of a connection, not
//! every later frame. Someone who can rewrite packets between two workers
//! can still tamper with a link; TLS protects against that.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Length of a nonce and of a proof.
pub const NONCE_LEN: usize = 32;
/// Version of this handshake and of the frames that follow it; a peer
/// speaking another is refused clearly. 2: `Join::grow`,
/// `Welcome::has_part`, `Control::Pause`, handoff frames.
pub const VERSION: u32 = 3;

pub type Nonce = [u8; NONCE_LEN];
type Proof = [u8; 32];

/// What a link is for; bound into the proofs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    Control,
    Data,
}

/// The handshake's messages (sent as the first frames of a link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMessage {
    Hello {
        version: u32,
        purpose: Purpose,
        nonce: Nonce,
    },
    Challenge {
        nonce: Nonce,
        proof: Proof,
    },
    Proof {
        proof: Proof,
    },
    Verdict {
        accepted: bool,
        reason: String,
    },
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the peer does not hold this cluster's secret (a different cookie): give every worker the same --cookie-file, QUOLL_COOKIE or ~/.quoll/cookie")]
    WrongSecret,
    #[error("the peer speaks handshake version {0}, this worker {VERSION}: run the same quoll everywhere")]
    Version(u32),
    #[error("the peer opened a {got:?} link where a {expected:?} link was expected")]
    Purpose { expected: Purpose, got: Purpose },
    #[error("the peer ended the handshake: {0}")]
    Refused(String),
    #[error("the peer sent {0} out of turn")]
    OutOfTurn(&'static str),
}

fn mac(
    secret: &[u8],
    label: &[u8],
    purpose: Purpose,
    initiator: &Nonce,
    acceptor: &Nonce,
) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(&[purpose as u8]);
    mac.update(initiator);
    mac.update(acceptor);
    mac
}

fn proof(
    secret: &[u8],
    label: &[u8],
    purpose: Purpose,
    initiator: &Nonce,
    acceptor: &Nonce,
) -> Proof {
    mac(secret, label, purpose, initiator, acceptor)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of `got` against the expected proof.
fn verify(
    secret: &[u8],
    label: &[u8],
    purpose: Purpose,
    initiator: &Nonce,
    acceptor: &Nonce,
    got: &Proof,
) -> bool {
    mac(secret, label, purpose, initiator, acceptor)
        .verify_slice(got)
        .is_ok()
}

const ACCEPTOR: &[u8] = b"quoll acceptor";
const INITIATOR: &[u8] = b"quoll initiator";

/// The connecting side.
#[derive(Debug)]
pub struct Initiator {
    secret: Vec<u8>,
    purpose: Purpose,
    nonce: Nonce,
    state: InitiatorState,
}

#[derive(Debug, PartialEq)]
enum InitiatorState {
    AwaitChallenge,
    AwaitVerdict,
    Done,
}

/// What a side does after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this and wait for the next message.
    Send(AuthMessage),
    /// Send this (if any) and the link is authenticated.
    Done(Option<AuthMessage>),
}

impl Initiator {
    /// Begins a handshake with a fresh `nonce`; returns the first message.
    pub fn start(secret: &[u8], purpose: Purpose, nonce: Nonce) -> (Initiator, AuthMessage) {
        let hello = AuthMessage::Hello {
            version: VERSION,
            purpose,
            nonce,
        };
        let me = Initiator {
            secret: secret.to_vec(),
            purpose,
            nonce,
            state: InitiatorState::AwaitChallenge,
        };
        (me, hello)
    }

    pub fn on_message(&mut self, msg: AuthMessage) -> Result<Step, AuthError> {
        match (&self.state, msg) {
            (InitiatorState::AwaitChallenge, AuthMessage::Challenge { nonce, proof: p }) => {
                if !verify(
                    &self.secret,
                    ACCEPTOR,
                    self.purpose,
                    &self.nonce,
                    &nonce,
                    &p,
                ) {
                    return Err(AuthError::WrongSecret);
                }
                self.state = InitiatorState::AwaitVerdict;
                let proof = proof(&self.secret, INITIATOR, self.purpose, &self.nonce, &nonce);
                Ok(Step::Send(AuthMessage::Proof { proof }))
            }
            (InitiatorState::AwaitVerdict, AuthMessage::Verdict { accepted: true, .. }) => {
                self.state = InitiatorState::Done;
                Ok(Step::Done(None))
            }
            (
                _,
                AuthMessage::Verdict {
                    accepted: false,
                    reason,
                },
            ) => Err(AuthError::Refused(reason)),
            (_, other) => Err(AuthError::OutOfTurn(name(&other))),
        }
    }
}

/// The listening side.
#[derive(Debug)]
pub struct Acceptor {
    secret: Vec<u8>,
    expected: Purpose,
    nonce: Nonce,
    state: AcceptorState,
}

#[derive(Debug)]
enum AcceptorState {
    AwaitHello,
    AwaitProof { initiator: Nonce, purpose: Purpose },
    Done,
}

impl Acceptor {
    /// Waits for a hello, answering with its own fresh `nonce`.
    pub fn new(secret: &[u8], expected: Purpose, nonce: Nonce) -> Acceptor {
        Acceptor {
            secret: secret.to_vec(),
            expected,
            nonce,
            state: AcceptorState::AwaitHello,
        }
    }

    /// The next message to send, or the error (after which the caller
    /// should send [`Acceptor::refusal`] and close).
    pub fn on_message(&mut self, msg: AuthMessage) -> Result<Step, AuthError> {
        match (&self.state, msg) {
            (
                AcceptorState::AwaitHello,
                AuthMessage::Hello {
                    version,
                    purpose,
                    nonce,
                },
            ) => {
                if version != VERSION {
                    return Err(AuthError::Version(version));
                }
                if purpose != self.expected {
                    return Err(AuthError::Purpose {
                        expected: self.expected,
                        got: purpose,
                    });
                }
                let proof = proof(&self.secret, ACCEPTOR, purpose, &nonce, &self.nonce);
                self.state = AcceptorState::AwaitProof {
                    initiator: nonce,
                    purpose,
                };
                Ok(Step::Send(AuthMessage::Challenge {
                    nonce: self.nonce,
                    proof,
                }))
            }
            (
                _,
                AuthMessage::Verdict {
                    accepted: false,
                    reason,
                },
            ) => Err(AuthError::Refused(reason)),
            (AcceptorState::AwaitProof { initiator, purpose }, AuthMessage::Proof { proof: p }) => {
                if !verify(
                    &self.secret,
                    INITIATOR,
                    *purpose,
                    initiator,
                    &self.nonce,
                    &p,
                ) {
                    return Err(AuthError::WrongSecret);
                }
                self.state = AcceptorState::Done;
                Ok(Step::Done(Some(AuthMessage::Verdict {
                    accepted: true,
                    reason: String::new(),
                })))
            }
            (_, other) => Err(AuthError::OutOfTurn(name(&other))),
        }
    }

    /// The message telling the peer why the handshake failed (either side
    /// sends it before closing, so both can say why).
    pub fn refusal(error: &AuthError) -> AuthMessage {
        let reason = match error {
            AuthError::WrongSecret => {
                "the two workers hold different cluster secrets (cookies)".to_string()
            }
            other => other.to_string(),
        };
        AuthMessage::Verdict {
            accepted: false,
            reason,
        }
    }
}

fn name(msg: &AuthMessage) -> &'static str {
    match msg {
        AuthMessage::Hello { .. } => "Hello",
        AuthMessage::Challenge { .. } => "Challenge",
        AuthMessage::Proof { .. } => "Proof",
        AuthMessage::Verdict { .. } => "Verdict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs a whole handshake; the outcome on each side.
    fn run(
        initiator_secret: &[u8],
        acceptor_secret: &[u8],
        ni: Nonce,
        na: Nonce,
    ) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let (mut i, hello) = Initiator::start(initiator_secret, Purpose::Control, ni);
        let mut a = Acceptor::new(acceptor_secret, Purpose::Control, na);
        let Ok(Step::Send(challenge)) = a.on_message(hello) else {
            panic!("a hello is always answered")
        };
        let proof = match i.on_message(challenge) {
            Ok(Step::Send(p)) => p,
            Err(e) => return (Err(e), Err(AuthError::OutOfTurn("nothing"))),
            Ok(other) => panic!("{other:?}"),
        };
        match a.on_message(proof) {
            Ok(Step::Done(Some(verdict))) => (i.on_message(verdict).map(|_| ()), Ok(())),
            Err(e) => {
                let verdict = Acceptor::refusal(&e);
                (i.on_message(verdict).map(|_| ()), Err(e))
            }
            Ok(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_same_secret_authenticates_both_ways() {
        assert_eq!(
            run(b"s3cret", b"s3cret", [1; 32], [2; 32]),
            (Ok(()), Ok(()))
        );
    }

    #[test]
    fn a_different_secret_fails_on_both_sides() {
        let (i, a) = run(b"one", b"two", [1; 32], [2; 32]);
        assert_eq!(
            i,
            Err(AuthError::WrongSecret),
            "the initiator sees the acceptor's proof fail"
        );
        assert_eq!(a, Err(AuthError::OutOfTurn("nothing")));
    }

    #[test]
    fn a_recorded_proof_replayed_on_a_new_connection_fails() {
        let secret = b"k";
        let (mut i, hello) = Initiator::start(secret, Purpose::Control, [7; 32]);
        let mut a = Acceptor::new(secret, Purpose::Control, [8; 32]);
        let Ok(Step::Send(challenge)) = a.on_message(hello.clone()) else {
            panic!()
        };
        let Ok(Step::Send(recorded_proof)) = i.on_message(challenge) else {
            panic!()
        };
        // An attacker replays the recorded hello and proof to a new acceptor
        // (whose nonce is fresh).
        let mut fresh = Acceptor::new(secret, Purpose::Control, [9; 32]);
        assert!(matches!(fresh.on_message(hello), Ok(Step::Send(_))));
        assert_eq!(
            fresh.on_message(recorded_proof),
            Err(AuthError::WrongSecret)
        );
    }

    #[test]
    fn a_reflected_challenge_is_not_a_proof() {
        // An attacker without the secret sends the acceptor's own proof back.
        let secret = b"k";
        let mut a = Acceptor::new(secret, Purpose::Data, [3; 32]);
        let hello = AuthMessage::Hello {
            version: VERSION,
            purpose: Purpose::Data,
            nonce: [3; 32],
        };
        let Ok(Step::Send(AuthMessage::Challenge { proof, .. })) = a.on_message(hello) else {
            panic!()
        };
        assert_eq!(
            a.on_message(AuthMessage::Proof { proof }),
            Err(AuthError::WrongSecret)
        );
    }

    #[test]
    fn wrong_purpose_version_and_order_are_refused() {
        let mut a = Acceptor::new(b"k", Purpose::Data, [0; 32]);
        let hello = AuthMessage::Hello {
            version: VERSION,
            purpose: Purpose::Control,
            nonce: [1; 32],
        };
        assert!(matches!(
            a.on_message(hello),
            Err(AuthError::Purpose { .. })
        ));
        let mut a = Acceptor::new(b"k", Purpose::Data, [0; 32]);
        let hello = AuthMessage::Hello {
            version: 99,
            purpose: Purpose::Data,
            nonce: [1; 32],
        };
        assert_eq!(a.on_message(hello), Err(AuthError::Version(99)));
        let mut a = Acceptor::new(b"k", Purpose::Data, [0; 32]);
        assert_eq!(
            a.on_message(AuthMessage::Proof { proof: [0; 32] }),
            Err(AuthError::OutOfTurn("Proof"))
        );
    }

    proptest! {
        /// Whatever an attacker without the secret sends, the acceptor never
        /// reaches `Done`.
        #[test]
        fn no_message_sequence_without_the_secret_authenticates(
            msgs in proptest::collection::vec((any::<[u8; 32]>(), 0u8..4, any::<bool>()), 1..6),
        ) {
            let mut a = Acceptor::new(b"the real secret", Purpose::Control, [42; 32]);
            for (bytes, kind, flag) in msgs {
                let msg = match kind {
                    0 => AuthMessage::Hello { version: VERSION, purpose: Purpose::Control, nonce: bytes },
                    1 => AuthMessage::Proof { proof: bytes },
                    2 => AuthMessage::Challenge { nonce: bytes, proof: bytes },
                    _ => AuthMessage::Verdict { accepted: flag, reason: String::new() },
                };
                match a.on_message(msg) {
                    Ok(Step::Done(_)) => prop_assert!(false, "authenticated without the secret"),
                    Ok(Step::Send(_)) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
