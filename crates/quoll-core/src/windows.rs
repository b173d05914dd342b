//! Window state machines, generic over the aggregation (the semantics are
//! Wallaroo's, summarised in docs/wallaroo-compat.md, "Windows").
//!
//! Nothing here knows about Python. An [`Aggregator`] is the four user calls
//! of a Wallaroo `Aggregation` (`initial_accumulator`, `update`, `combine`,
//! `output`). Window state never stores the aggregator: every method takes
//! `agg: &mut A`, so the Python binding can build an aggregator holding the
//! GIL token for the duration of one call. One value of [`RangeWindows`] or
//! [`CountWindows`] is the state of **one key of one window stage**.
//!
//! # Range windows: the pane model
//!
//! A window stage has a range `R`, a slide `S` (`0 < S <= R`, `S == R` is
//! tumbling) and a delay `D`, rounded up to a multiple of `S`. Time is cut into
//! **panes** of `P = gcd(R, S)` nanoseconds on a grid anchored per key at
//! `A = first watermark - D - offset`, where `offset` (in Wallaroo a random
//! value in `[0, 0.8 R)`, spreading keys' firing times) is chosen by the caller,
//! so tests are deterministic. Pane `p` is `[A + pP, A + (p+1)P)`; window `w`
//! is `[A + wS, A + wS + R)`, the union of panes `w·S/P .. w·S/P + R/P`.
//! Indices may be negative: the first window of a key is the earliest one that
//! contains the anchor, so an event at or after the anchor is in *every*
//! window containing it (about `R/S` of them).
//!
//! Each message is `update`d into exactly one pane (the one holding its event
//! time); a pane's accumulator is created lazily with `initial_accumulator()`
//! on its first message, so empty panes cost nothing. Panes are kept in a
//! sparse ordered map: a message beyond the current horizon simply creates
//! its pane (it is never dropped), and a gap in the input costs no memory.
//!
//! # Firing
//!
//! Window `w` is **due** when its last nanosecond lies before `watermark - D`,
//! i.e. `A + wS + R - 1 < watermark - D`. On every message (after the message
//! is placed) and on every timer call, all due windows fire **oldest first**.
//! Firing folds the window's panes onto a fresh identity:
//! `acc = initial_accumulator(); for pane: acc = combine(&acc, pane)`, then
//! `output(key, &acc)`; a `Some` result becomes a [`WindowOutput`] whose
//! `event_time` is the window's **last nanosecond** `A + wS + R - 1` (inside
//! the window, as in Wallaroo). **Empty windows fire too** (with an identity
//! accumulator), with one bound: after a window holding data (or from the
//! start), at most [`RangeWindowSpec::max_empty_run`] consecutive empty
//! windows fire; the rest of that empty run is skipped until the next window
//! with data. This keeps a long input gap from turning into millions of
//! `output` calls (Wallaroo's fixed ring of panes has the same effect); it never
//! loses data, since only windows without data are skipped. The default bound
//! is the number of windows a pane is live in, `ceil(R/S) + D/S`.
//!
//! [`RangeWindows::flush`] is the quiet-input flush: it fires every window up
//! to the highest event time seen plus `R + D`, that is every window whose
//! start is at or before the highest event time, so everything received has
//! been output.
//!
//! # Late data
//!
//! A message whose event time is before the start of the earliest unfired
//! window is late, and follows the stage's [`LateDataPolicy`]:
//! - `Drop`: discarded;
//! - `FirePerMessage`: a fresh accumulator gets that one `update` and
//!   `output` is called at once; the output's event time is the message's;
//! - `PlaceInOldestWindow`: `update`d into the first pane of the earliest
//!   unfired window, and counted there (as if its event time were that
//!   window's start, which the flush takes into account).
//!
//! With in-order input whose watermark equals its event time, nothing is ever
//! late: a window containing `t` cannot be due while the watermark is `<= t`.
//!
//! # Invariants (range windows)
//!
//! - Every stored pane belongs to an unfired window: its index is at least
//!   `next_window · S/P`. Panes are dropped as soon as the window that needed
//!   them last has fired.
//! - Windows fire exactly once, in index order; `next_window` only grows.
//! - A message is in exactly one pane, so in exactly the windows containing its
//!   pane, each of which fires once: nothing is lost or counted twice (beyond
//!   what the late policy says).
//!
//! # Errors
//!
//! Aggregator errors propagate as `Err(A::Error)` and leave the state
//! consistent:
//! - a failing `initial_accumulator` or `update` while placing a message: the
//!   message is not recorded (a pane created for it is discarded) and nothing
//!   fires in that call; the next call fires whatever is due. An `update` that
//!   fails on an existing accumulator may have mutated it before failing: user
//!   code's side effects cannot be undone.
//! - a failing `initial_accumulator`, `combine` or `output` while firing a
//!   window: that window counts as fired and produces no output; the error is
//!   returned at once, and later due windows fire on the next call. Outputs
//!   pushed to `out` before the error are valid.
//!
//! # Count windows
//!
//! [`CountWindows`]: each message is `update`d into the key's live
//! accumulator (created lazily); when the count reaches `n`, `output` gets the
//! live accumulator, which is then dropped (a fresh one is made on the next
//! message). [`CountWindows::flush_partial`] is the periodic (5 s) timer: it
//! emits and resets a non-empty partial window. Output event time is the
//! highest event time among the window's messages. Invariant: the accumulator
//! exists exactly when the count is non-zero, and the count stays below `n`
//! between calls. A failing `update` leaves the message uncounted; a failing
//! `output` still resets the window.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The four calls of a Wallaroo `Aggregation`.
pub trait Aggregator {
    type Input;
    type Acc;
    type Output;
    type Error;
    /// A new accumulator: the identity for `combine`.
    fn initial_accumulator(&mut self) -> Result<Self::Acc, Self::Error>;
    /// Fold one input into `acc`, in place.
    fn update(&mut self, input: &Self::Input, acc: &mut Self::Acc) -> Result<(), Self::Error>;
    /// A new accumulator combining `a` and `b` (which are not modified).
    fn combine(&mut self, a: &Self::Acc, b: &Self::Acc) -> Result<Self::Acc, Self::Error>;
    /// The window's output, or `None` for no output.
    fn output(&mut self, key: &[u8], acc: &Self::Acc) -> Result<Option<Self::Output>, Self::Error>;
}

/// One output of a window stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowOutput<O> {
    pub value: O,
    /// Event time of the output: the window's last nanosecond (range
    /// windows), the late message's event time (fire-per-message) or the
    /// highest event time in the window (count windows).
    pub event_time: i64,
}

/// What happens to a message whose event time is before the earliest open
/// window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LateDataPolicy {
    #[default]
    Drop,
    FirePerMessage,
    PlaceInOldestWindow,
}

impl LateDataPolicy {
    /// Parse the Wallaroo spelling: `"drop"`, `"fire-per-message"` or
    /// `"place-in-oldest-window"`.
    pub fn parse(s: &str) -> Result<LateDataPolicy, WindowSpecError> {
        match s {
            "drop" => Ok(LateDataPolicy::Drop),
            "fire-per-message" => Ok(LateDataPolicy::FirePerMessage),
            "place-in-oldest-window" => Ok(LateDataPolicy::PlaceInOldestWindow),
            other => Err(WindowSpecError::UnknownLateDataPolicy(other.to_owned())),
        }
    }

    /// The Wallaroo spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            LateDataPolicy::Drop => "drop",
            LateDataPolicy::FirePerMessage => "fire-per-message",
            LateDataPolicy::PlaceInOldestWindow => "place-in-oldest-window",
        }
    }
}

/// Invalid window parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowSpecError {
    #[error("a window's range must be greater than 0")]
    ZeroRange,
    #[error("a window's slide must be greater than 0")]
    ZeroSlide,
    #[error("a window's slide cannot be greater than its range (slide {slide} > range {range})")]
    SlideGreaterThanRange { range: u64, slide: u64 },
    #[error("window {what} of {value} ns is too long (max {MAX_DURATION_NS} ns)")]
    TooLong { what: &'static str, value: u64 },
    #[error(
        "Invalid value for late_data_policy: {0:?} (expected \"drop\", \
         \"fire-per-message\" or \"place-in-oldest-window\")"
    )]
    UnknownLateDataPolicy(String),
    #[error("a count window's count must be greater than 0")]
    ZeroCount,
}

/// Longest accepted range, slide or (rounded) delay: 2^60 ns, about 36 years.
/// Keeps all grid arithmetic far from `i64` overflow.
pub const MAX_DURATION_NS: u64 = 1 << 60;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Validated parameters of a range window stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RangeWindowSpec {
    range: u64,
    slide: u64,
    delay: u64,
    policy: LateDataPolicy,
    pane: u64,
    max_empty_run: u64,
}

impl RangeWindowSpec {
    /// Check `range > 0`, `slide > 0`, `slide <= range`, and round `delay` up
    /// to a multiple of `slide`.
    pub fn new(
        range_ns: u64,
        slide_ns: u64,
        delay_ns: u64,
        policy: LateDataPolicy,
    ) -> Result<RangeWindowSpec, WindowSpecError> {
        if range_ns == 0 {
            return Err(WindowSpecError::ZeroRange);
        }
        if slide_ns == 0 {
            return Err(WindowSpecError::ZeroSlide);
        }
        if slide_ns > range_ns {
            return Err(WindowSpecError::SlideGreaterThanRange {
                range: range_ns,
                slide: slide_ns,
            });
        }
        if range_ns > MAX_DURATION_NS {
            return Err(WindowSpecError::TooLong {
                what: "range",
                value: range_ns,
            });
        }
        let too_long_delay = WindowSpecError::TooLong {
            what: "delay",
            value: delay_ns,
        };
        if delay_ns > MAX_DURATION_NS {
            return Err(too_long_delay);
        }
        let delay = delay_ns.div_ceil(slide_ns) * slide_ns;
        if delay > MAX_DURATION_NS {
            return Err(too_long_delay);
        }
        let mut spec = RangeWindowSpec {
            range: range_ns,
            slide: slide_ns,
            delay,
            policy,
            pane: gcd(range_ns, slide_ns),
            max_empty_run: 0,
        };
        spec.max_empty_run = spec.windows_per_pane() + delay / slide_ns;
        Ok(spec)
    }

    /// Override the bound on consecutive empty windows fired after a window
    /// with data (see the module docs). `u64::MAX` fires every empty window.
    pub fn with_max_empty_run(mut self, max_empty_run: u64) -> RangeWindowSpec {
        self.max_empty_run = max_empty_run;
        self
    }

    pub fn range(&self) -> u64 {
        self.range
    }

    pub fn slide(&self) -> u64 {
        self.slide
    }

    /// The delay, rounded up to a multiple of the slide.
    pub fn delay(&self) -> u64 {
        self.delay
    }

    pub fn late_data_policy(&self) -> LateDataPolicy {
        self.policy
    }

    /// `gcd(range, slide)`.
    pub fn pane_size(&self) -> u64 {
        self.pane
    }

    pub fn panes_per_window(&self) -> u64 {
        self.range / self.pane
    }

    pub fn panes_per_slide(&self) -> u64 {
        self.slide / self.pane
    }

    /// How many windows contain a given pane at most: `ceil(range / slide)`.
    pub fn windows_per_pane(&self) -> u64 {
        self.range.div_ceil(self.slide)
    }

    pub fn max_empty_run(&self) -> u64 {
        self.max_empty_run
    }

    /// Offsets are drawn from `[0, max_offset())`, i.e. `[0, 0.8 × range)`
    /// (just `0` for a 1 ns range).
    pub fn max_offset(&self) -> u64 {
        (u128::from(self.range) * 4 / 5) as u64
    }

    /// Map a uniformly random `u64` onto `[0, max_offset())`.
    pub fn offset_from_random(&self, random: u64) -> u64 {
        ((u128::from(random) * u128::from(self.max_offset())) >> 64) as u64
    }

    /// The stage timer period, as in Wallaroo: `2 × (range + delay)`.
    pub fn timer_period(&self) -> u64 {
        2 * (self.range + self.delay)
    }
}

/// How [`RangeWindows::on_message`] placed a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// In its pane, so in every window containing its event time.
    OnTime,
    /// Late, discarded (`Drop`).
    LateDropped,
    /// Late, output on its own (`FirePerMessage`).
    LateFired,
    /// Late, put into the oldest unfired window (`PlaceInOldestWindow`).
    LatePlacedInOldest,
}

/// A snapshot/restore argument that does not describe a valid state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("window start {start} is not on the slide grid of anchor {anchor}")]
    MisalignedWindow { anchor: i64, start: i64 },
    #[error("pane start {start} is not on the pane grid of anchor {anchor}")]
    MisalignedPane { anchor: i64, start: i64 },
    #[error("pane {start} lies before the earliest open window {window_start}")]
    PaneBeforeOpenWindow { start: i64, window_start: i64 },
    #[error("pane starts are not strictly increasing at {start}")]
    PanesOutOfOrder { start: i64 },
    #[error("count window state has count {count} for a window of {n}")]
    CountOutOfRange { count: u64, n: u64 },
    #[error("count window state has count {count} but {has} accumulator")]
    CountAccMismatch { count: u64, has: &'static str },
}

/// The parts of a [`RangeWindows`], for checkpoints. All times are absolute
/// nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeWindowsSnapshot<Acc> {
    /// The grid anchor.
    pub anchor_ns: i64,
    /// Start of the earliest unfired window.
    pub next_window_start_ns: i64,
    /// Highest event time seen (starts at the first watermark).
    pub highest_event_time_ns: i64,
    /// Empty windows fired since the last window with data.
    pub empty_run: u64,
    /// `(pane start, accumulator)` of the non-empty panes, ascending.
    pub panes: Vec<(i64, Acc)>,
}

impl<Acc> RangeWindowsSnapshot<Acc> {
    /// Convert the accumulators (e.g. to bytes and back).
    pub fn try_map<B, E>(
        self,
        mut f: impl FnMut(Acc) -> Result<B, E>,
    ) -> Result<RangeWindowsSnapshot<B>, E> {
        Ok(RangeWindowsSnapshot {
            anchor_ns: self.anchor_ns,
            next_window_start_ns: self.next_window_start_ns,
            highest_event_time_ns: self.highest_event_time_ns,
            empty_run: self.empty_run,
            panes: self
                .panes
                .into_iter()
                .map(|(t, acc)| Ok((t, f(acc)?)))
                .collect::<Result<_, E>>()?,
        })
    }
}

fn clamp_i64(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Range window state of one key of one window stage; see the module docs.
#[derive(Debug, Clone)]
pub struct RangeWindows<Acc> {
    spec: RangeWindowSpec,
    anchor: i64,
    /// Index of the earliest unfired window.
    next_window: i64,
    highest_event_time: i64,
    /// Consecutive empty windows fired since the last window with data.
    empty_run: u64,
    /// Non-empty panes by index; all indices >= `next_window * panes_per_slide`.
    panes: BTreeMap<i64, Acc>,
}

impl<Acc> RangeWindows<Acc> {
    /// State for a key whose first message arrives at `first_watermark_ns`;
    /// the grid is anchored at `first_watermark_ns - delay - offset_ns`
    /// (`offset_ns` normally from [`RangeWindowSpec::offset_from_random`]).
    pub fn new(
        spec: RangeWindowSpec,
        first_watermark_ns: i64,
        offset_ns: u64,
    ) -> RangeWindows<Acc> {
        let anchor = clamp_i64(
            i128::from(first_watermark_ns) - i128::from(spec.delay) - i128::from(offset_ns),
        );
        let mut w = RangeWindows {
            spec,
            anchor,
            next_window: 0,
            highest_event_time: first_watermark_ns,
            empty_run: 0,
            panes: BTreeMap::new(),
        };
        w.next_window = w.first_window_containing_pane(0);
        w
    }

    pub fn spec(&self) -> &RangeWindowSpec {
        &self.spec
    }

    pub fn anchor_ns(&self) -> i64 {
        self.anchor
    }

    /// Start of the earliest unfired window; earlier event times are late.
    pub fn next_window_start_ns(&self) -> i64 {
        self.window_start(self.next_window)
    }

    pub fn highest_event_time_ns(&self) -> i64 {
        self.highest_event_time
    }

    /// The watermark at which the earliest unfired window becomes due.
    pub fn next_due_watermark_ns(&self) -> i64 {
        clamp_i64(
            i128::from(self.next_window_start_ns())
                + i128::from(self.spec.range)
                + i128::from(self.spec.delay),
        )
    }

    /// True when no pane holds data (the key's state could be discarded).
    pub fn is_empty(&self) -> bool {
        self.panes.is_empty()
    }

    /// `(pane start, accumulator)` of the non-empty panes, ascending.
    pub fn panes(&self) -> impl Iterator<Item = (i64, &Acc)> + '_ {
        self.panes.iter().map(|(&p, acc)| (self.pane_start(p), acc))
    }

    /// The state's parts, accumulators by reference.
    pub fn snapshot(&self) -> RangeWindowsSnapshot<&Acc> {
        RangeWindowsSnapshot {
            anchor_ns: self.anchor,
            next_window_start_ns: self.next_window_start_ns(),
            highest_event_time_ns: self.highest_event_time,
            empty_run: self.empty_run,
            panes: self.panes().collect(),
        }
    }

    /// The state's parts, by value.
    pub fn into_snapshot(self) -> RangeWindowsSnapshot<Acc> {
        let starts: Vec<i64> = self.panes.keys().map(|&p| self.pane_start(p)).collect();
        RangeWindowsSnapshot {
            anchor_ns: self.anchor,
            next_window_start_ns: self.next_window_start_ns(),
            highest_event_time_ns: self.highest_event_time,
            empty_run: self.empty_run,
            panes: starts.into_iter().zip(self.panes.into_values()).collect(),
        }
    }

    /// Rebuild the exact state a snapshot was taken from (with the same spec).
    pub fn restore(
        spec: RangeWindowSpec,
        snapshot: RangeWindowsSnapshot<Acc>,
    ) -> Result<RangeWindows<Acc>, RestoreError> {
        let anchor = snapshot.anchor_ns;
        let mut w = RangeWindows {
            spec,
            anchor,
            next_window: 0,
            highest_event_time: snapshot.highest_event_time_ns,
            empty_run: snapshot.empty_run,
            panes: BTreeMap::new(),
        };
        let rel = i128::from(snapshot.next_window_start_ns) - i128::from(anchor);
        if rel.rem_euclid(i128::from(spec.slide)) != 0 {
            return Err(RestoreError::MisalignedWindow {
                anchor,
                start: snapshot.next_window_start_ns,
            });
        }
        w.next_window = clamp_i64(rel.div_euclid(i128::from(spec.slide)));
        let first_pane = w.first_open_pane();
        let mut last: Option<i64> = None;
        for (start, acc) in snapshot.panes {
            let rel = i128::from(start) - i128::from(anchor);
            if rel.rem_euclid(i128::from(spec.pane)) != 0 {
                return Err(RestoreError::MisalignedPane { anchor, start });
            }
            let p = clamp_i64(rel.div_euclid(i128::from(spec.pane)));
            if p < first_pane {
                return Err(RestoreError::PaneBeforeOpenWindow {
                    start,
                    window_start: snapshot.next_window_start_ns,
                });
            }
            if last.is_some_and(|l| l >= p) {
                return Err(RestoreError::PanesOutOfOrder { start });
            }
            last = Some(p);
            w.panes.insert(p, acc);
        }
        Ok(w)
    }

    /// Handle one message: place it (or apply the late-data policy), then fire
    /// every window due at `watermark_ns`. See the module docs for errors.
    pub fn on_message<A: Aggregator<Acc = Acc>>(
        &mut self,
        agg: &mut A,
        key: &[u8],
        input: &A::Input,
        event_time_ns: i64,
        watermark_ns: i64,
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<Placement, A::Error> {
        let pane = self.pane_of(event_time_ns);
        let first_open = self.first_open_pane();
        let placement = if pane >= first_open {
            self.update_pane(agg, pane, input)?;
            Placement::OnTime
        } else {
            match self.spec.policy {
                LateDataPolicy::Drop => Placement::LateDropped,
                LateDataPolicy::FirePerMessage => {
                    let mut acc = agg.initial_accumulator()?;
                    agg.update(input, &mut acc)?;
                    if let Some(value) = agg.output(key, &acc)? {
                        out.push(WindowOutput {
                            value,
                            event_time: event_time_ns,
                        });
                    }
                    Placement::LateFired
                }
                LateDataPolicy::PlaceInOldestWindow => {
                    self.update_pane(agg, first_open, input)?;
                    // It now counts as an event at that window's start, so
                    // that a flush covers it.
                    self.highest_event_time =
                        self.highest_event_time.max(self.next_window_start_ns());
                    Placement::LatePlacedInOldest
                }
            }
        };
        self.highest_event_time = self.highest_event_time.max(event_time_ns);
        self.fire_before(agg, key, self.due_end(watermark_ns), out)?;
        Ok(placement)
    }

    /// The periodic timer: fire every window due at `watermark_ns`.
    pub fn on_timer<A: Aggregator<Acc = Acc>>(
        &mut self,
        agg: &mut A,
        key: &[u8],
        watermark_ns: i64,
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<(), A::Error> {
        self.fire_before(agg, key, self.due_end(watermark_ns), out)
    }

    /// The quiet-input flush: fire every window due at watermark
    /// `highest event time + range + delay`, i.e. every window starting at or
    /// before the highest event time seen.
    pub fn flush<A: Aggregator<Acc = Acc>>(
        &mut self,
        agg: &mut A,
        key: &[u8],
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<(), A::Error> {
        let end = self.flush_end();
        self.fire_before(agg, key, end, out)
    }

    /// The watermark at which the last window [`flush`](Self::flush) would
    /// fire is due: `on_timer` at any watermark up to this one fires a
    /// prefix of what `flush` fires, and at this one exactly that. Lets a
    /// caller fire the quiet-input flush's windows one by one as time
    /// passes, instead of all at once.
    pub fn flush_due_watermark_ns(&self) -> i64 {
        clamp_i64(
            i128::from(self.window_start(self.flush_end().saturating_sub(1)))
                + i128::from(self.spec.range)
                + i128::from(self.spec.delay),
        )
    }

    /// One past the last window starting at or before the highest event time.
    fn flush_end(&self) -> i64 {
        let highest = i128::from(self.highest_event_time) - i128::from(self.anchor);
        clamp_i64(highest.div_euclid(i128::from(self.spec.slide)) + 1)
    }

    // ---- grid arithmetic (i128 inside, so no step can overflow) ----

    fn pps(&self) -> i128 {
        i128::from(self.spec.panes_per_slide())
    }

    fn ppw(&self) -> i128 {
        i128::from(self.spec.panes_per_window())
    }

    fn pane_of(&self, t: i64) -> i64 {
        clamp_i64((i128::from(t) - i128::from(self.anchor)).div_euclid(i128::from(self.spec.pane)))
    }

    fn pane_start(&self, p: i64) -> i64 {
        clamp_i64(i128::from(self.anchor) + i128::from(p) * i128::from(self.spec.pane))
    }

    fn window_start(&self, w: i64) -> i64 {
        clamp_i64(i128::from(self.anchor) + i128::from(w) * i128::from(self.spec.slide))
    }

    fn window_last_ns(&self, w: i64) -> i64 {
        clamp_i64(i128::from(self.window_start(w)) + i128::from(self.spec.range) - 1)
    }

    fn first_pane_of_window(&self, w: i64) -> i64 {
        clamp_i64(i128::from(w) * self.pps())
    }

    fn first_open_pane(&self) -> i64 {
        self.first_pane_of_window(self.next_window)
    }

    /// The smallest window index containing pane `p`.
    fn first_window_containing_pane(&self, p: i64) -> i64 {
        clamp_i64((i128::from(p) - self.ppw()).div_euclid(self.pps()) + 1)
    }

    /// One past the last window due at `watermark`: window `w` is due iff
    /// `A + wS + R - 1 < watermark - D`, i.e. `A + wS + R + D <= watermark`.
    fn due_end(&self, watermark: i64) -> i64 {
        let x = i128::from(watermark)
            - i128::from(self.anchor)
            - i128::from(self.spec.range)
            - i128::from(self.spec.delay);
        clamp_i64(x.div_euclid(i128::from(self.spec.slide)) + 1)
    }

    // ---- state changes ----

    fn update_pane<A: Aggregator<Acc = Acc>>(
        &mut self,
        agg: &mut A,
        pane: i64,
        input: &A::Input,
    ) -> Result<(), A::Error> {
        match self.panes.entry(pane) {
            Entry::Occupied(mut e) => agg.update(input, e.get_mut()),
            Entry::Vacant(v) => {
                let mut acc = agg.initial_accumulator()?;
                agg.update(input, &mut acc)?;
                v.insert(acc);
                Ok(())
            }
        }
    }

    /// Mark windows before `w` fired and drop the panes only they needed.
    fn advance_to(&mut self, w: i64) {
        debug_assert!(w >= self.next_window);
        self.next_window = w;
        let first = self.first_open_pane();
        while let Some(e) = self.panes.first_entry() {
            if *e.key() >= first {
                break;
            }
            e.remove();
        }
    }

    /// Fire windows `next_window .. end`, oldest first.
    fn fire_before<A: Aggregator<Acc = Acc>>(
        &mut self,
        agg: &mut A,
        key: &[u8],
        end: i64,
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<(), A::Error> {
        while self.next_window < end {
            let w = self.next_window;
            let first = i128::from(self.first_pane_of_window(w));
            let next_data = self.panes.keys().next().copied();
            match next_data {
                Some(p) if i128::from(p) < first + self.ppw() => {
                    // A window with data.
                    let result = self.fire_window(agg, key, w, out);
                    self.empty_run = 0;
                    self.advance_to(w + 1);
                    result?;
                }
                _ => {
                    // A run of empty windows, up to the first window holding
                    // `next_data` (or `end`).
                    let run_end = match next_data {
                        Some(p) => self.first_window_containing_pane(p).min(end),
                        None => end,
                    };
                    let run = (i128::from(run_end) - i128::from(w)) as u128;
                    let allowed = self.spec.max_empty_run.saturating_sub(self.empty_run);
                    let fire = run.min(u128::from(allowed)).min(i64::MAX as u128) as i64;
                    for j in 0..fire {
                        let result = self.fire_empty(agg, key, w + j, out);
                        self.empty_run = self.empty_run.saturating_add(1);
                        self.advance_to(w + j + 1);
                        result?;
                    }
                    self.advance_to(run_end);
                }
            }
        }
        Ok(())
    }

    fn fire_window<A: Aggregator<Acc = Acc>>(
        &self,
        agg: &mut A,
        key: &[u8],
        w: i64,
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<(), A::Error> {
        let first = self.first_pane_of_window(w);
        let end = clamp_i64(i128::from(first) + self.ppw());
        let mut acc = agg.initial_accumulator()?;
        for pane in self.panes.range(first..end).map(|(_, acc)| acc) {
            acc = agg.combine(&acc, pane)?;
        }
        if let Some(value) = agg.output(key, &acc)? {
            out.push(WindowOutput {
                value,
                event_time: self.window_last_ns(w),
            });
        }
        Ok(())
    }

    fn fire_empty<A: Aggregator<Acc = Acc>>(
        &self,
        agg: &mut A,
        key: &[u8],
        w: i64,
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<(), A::Error> {
        let acc = agg.initial_accumulator()?;
        if let Some(value) = agg.output(key, &acc)? {
            out.push(WindowOutput {
                value,
                event_time: self.window_last_ns(w),
            });
        }
        Ok(())
    }
}

/// Validated parameters of a count window stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountWindowSpec {
    count: u64,
}

impl CountWindowSpec {
    pub fn new(count: u64) -> Result<CountWindowSpec, WindowSpecError> {
        if count == 0 {
            return Err(WindowSpecError::ZeroCount);
        }
        Ok(CountWindowSpec { count })
    }

    /// Messages per window.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The parts of a [`CountWindows`], for checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountWindowsSnapshot<Acc> {
    /// Messages in the partial window (`< n`).
    pub count: u64,
    /// Its accumulator; present exactly when `count > 0`.
    pub acc: Option<Acc>,
    /// Highest event time among its messages (meaningless when empty).
    pub max_event_time_ns: i64,
}

impl<Acc> CountWindowsSnapshot<Acc> {
    /// Convert the accumulator (e.g. to bytes and back).
    pub fn try_map<B, E>(
        self,
        f: impl FnOnce(Acc) -> Result<B, E>,
    ) -> Result<CountWindowsSnapshot<B>, E> {
        Ok(CountWindowsSnapshot {
            count: self.count,
            acc: self.acc.map(f).transpose()?,
            max_event_time_ns: self.max_event_time_ns,
        })
    }
}

/// Count window state of one key of one window stage; see the module docs.
#[derive(Debug, Clone)]
pub struct CountWindows<Acc> {
    spec: CountWindowSpec,
    count: u64,
    acc: Option<Acc>,
    max_event_time: i64,
}

impl<Acc> CountWindows<Acc> {
    pub fn new(spec: CountWindowSpec) -> CountWindows<Acc> {
        CountWindows {
            spec,
            count: 0,
            acc: None,
            max_event_time: i64::MIN,
        }
    }

    pub fn spec(&self) -> &CountWindowSpec {
        &self.spec
    }

    /// Messages in the current partial window.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The live accumulator (present exactly when `count() > 0`).
    pub fn accumulator(&self) -> Option<&Acc> {
        self.acc.as_ref()
    }

    /// Update the live accumulator; at the `n`th message, output it and reset.
    pub fn on_message<A: Aggregator<Acc = Acc>>(
        &mut self,
        agg: &mut A,
        key: &[u8],
        input: &A::Input,
        event_time_ns: i64,
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<(), A::Error> {
        match &mut self.acc {
            Some(acc) => agg.update(input, acc)?,
            None => {
                let mut acc = agg.initial_accumulator()?;
                agg.update(input, &mut acc)?;
                self.acc = Some(acc);
            }
        }
        self.count += 1;
        self.max_event_time = self.max_event_time.max(event_time_ns);
        if self.count >= self.spec.count {
            self.emit(agg, key, out)?;
        }
        Ok(())
    }

    /// The periodic partial flush: output and reset a non-empty window.
    pub fn flush_partial<A: Aggregator<Acc = Acc>>(
        &mut self,
        agg: &mut A,
        key: &[u8],
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<(), A::Error> {
        if self.count > 0 {
            self.emit(agg, key, out)?;
        }
        Ok(())
    }

    fn emit<A: Aggregator<Acc = Acc>>(
        &mut self,
        agg: &mut A,
        key: &[u8],
        out: &mut Vec<WindowOutput<A::Output>>,
    ) -> Result<(), A::Error> {
        let event_time = self.max_event_time;
        self.count = 0;
        self.max_event_time = i64::MIN;
        let Some(acc) = self.acc.take() else {
            return Ok(());
        };
        if let Some(value) = agg.output(key, &acc)? {
            out.push(WindowOutput { value, event_time });
        }
        Ok(())
    }

    /// The state's parts, accumulator by reference.
    pub fn snapshot(&self) -> CountWindowsSnapshot<&Acc> {
        CountWindowsSnapshot {
            count: self.count,
            acc: self.acc.as_ref(),
            max_event_time_ns: self.max_event_time,
        }
    }

    pub fn into_snapshot(self) -> CountWindowsSnapshot<Acc> {
        CountWindowsSnapshot {
            count: self.count,
            acc: self.acc,
            max_event_time_ns: self.max_event_time,
        }
    }

    pub fn restore(
        spec: CountWindowSpec,
        snapshot: CountWindowsSnapshot<Acc>,
    ) -> Result<CountWindows<Acc>, RestoreError> {
        if snapshot.count >= spec.count {
            return Err(RestoreError::CountOutOfRange {
                count: snapshot.count,
                n: spec.count,
            });
        }
        if (snapshot.count > 0) != snapshot.acc.is_some() {
            return Err(RestoreError::CountAccMismatch {
                count: snapshot.count,
                has: if snapshot.acc.is_some() { "an" } else { "no" },
            });
        }
        Ok(CountWindows {
            spec,
            count: snapshot.count,
            acc: snapshot.acc,
            max_event_time: snapshot.max_event_time_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the test aggregation outputs: the key, the sum, the count and the
    /// sorted items of the window.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Out {
        key: Vec<u8>,
        sum: u64,
        count: usize,
        items: Vec<u64>,
    }

    /// Sums u64s, keeping them in a `Vec<u64>` accumulator.
    #[derive(Default)]
    struct SumAgg {
        fail_update_on: Option<u64>,
        fail_output_on_sum: Option<u64>,
        none_for_empty: bool,
        initial_calls: usize,
        combine_calls: usize,
    }

    impl Aggregator for SumAgg {
        type Input = u64;
        type Acc = Vec<u64>;
        type Output = Out;
        type Error = String;

        fn initial_accumulator(&mut self) -> Result<Vec<u64>, String> {
            self.initial_calls += 1;
            Ok(Vec::new())
        }

        fn update(&mut self, input: &u64, acc: &mut Vec<u64>) -> Result<(), String> {
            if Some(*input) == self.fail_update_on {
                return Err(format!("update failed on {input}"));
            }
            acc.push(*input);
            Ok(())
        }

        fn combine(&mut self, a: &Vec<u64>, b: &Vec<u64>) -> Result<Vec<u64>, String> {
            self.combine_calls += 1;
            Ok([a.as_slice(), b.as_slice()].concat())
        }

        fn output(&mut self, key: &[u8], acc: &Vec<u64>) -> Result<Option<Out>, String> {
            if self.none_for_empty && acc.is_empty() {
                return Ok(None);
            }
            let sum = acc.iter().sum();
            if Some(sum) == self.fail_output_on_sum {
                return Err(format!("output failed on sum {sum}"));
            }
            let mut items = acc.clone();
            items.sort_unstable();
            Ok(Some(Out {
                key: key.to_vec(),
                sum,
                count: acc.len(),
                items,
            }))
        }
    }

    const KEY: &[u8] = b"k";

    /// (sum, count, event time) of each output.
    fn summary(out: &[WindowOutput<Out>]) -> Vec<(u64, usize, i64)> {
        out.iter()
            .map(|o| (o.value.sum, o.value.count, o.event_time))
            .collect()
    }

    fn spec(range: u64, slide: u64, delay: u64, policy: LateDataPolicy) -> RangeWindowSpec {
        RangeWindowSpec::new(range, slide, delay, policy).unwrap()
    }

    /// Send `(event time, value)` with watermark = event time.
    fn send(
        w: &mut RangeWindows<Vec<u64>>,
        agg: &mut SumAgg,
        msgs: &[(i64, u64)],
        out: &mut Vec<WindowOutput<Out>>,
    ) {
        for &(t, v) in msgs {
            w.on_message(agg, KEY, &v, t, t, out).unwrap();
        }
    }

    #[test]
    fn spec_validation() {
        use LateDataPolicy::Drop;
        assert_eq!(
            RangeWindowSpec::new(0, 1, 0, Drop),
            Err(WindowSpecError::ZeroRange)
        );
        assert_eq!(
            RangeWindowSpec::new(10, 0, 0, Drop),
            Err(WindowSpecError::ZeroSlide)
        );
        assert_eq!(
            RangeWindowSpec::new(10, 11, 0, Drop),
            Err(WindowSpecError::SlideGreaterThanRange {
                range: 10,
                slide: 11
            })
        );
        assert!(matches!(
            RangeWindowSpec::new(MAX_DURATION_NS + 1, 1, 0, Drop),
            Err(WindowSpecError::TooLong { what: "range", .. })
        ));
        assert!(matches!(
            RangeWindowSpec::new(10, 3, MAX_DURATION_NS, Drop),
            Err(WindowSpecError::TooLong { what: "delay", .. })
        ));
        let s = spec(10, 4, 5, Drop);
        assert_eq!(
            (s.range(), s.slide(), s.delay()),
            (10, 4, 8),
            "delay rounded up to the slide"
        );
        assert_eq!(s.pane_size(), 2);
        assert_eq!((s.panes_per_window(), s.panes_per_slide()), (5, 2));
        assert_eq!(s.windows_per_pane(), 3);
        assert_eq!(s.max_empty_run(), 3 + 2);
        assert_eq!(s.timer_period(), 36);
        assert_eq!(spec(10, 5, 10, Drop).delay(), 10);
        assert_eq!(spec(10, 5, 0, Drop).delay(), 0);
        assert_eq!(s.max_offset(), 8);
        assert_eq!(s.offset_from_random(0), 0);
        assert_eq!(s.offset_from_random(u64::MAX), 7);
        assert_eq!(spec(1, 1, 0, Drop).max_offset(), 0);
        assert_eq!(spec(1, 1, 0, Drop).offset_from_random(u64::MAX), 0);
        for p in [
            Drop,
            LateDataPolicy::FirePerMessage,
            LateDataPolicy::PlaceInOldestWindow,
        ] {
            assert_eq!(LateDataPolicy::parse(p.as_str()), Ok(p));
        }
        assert_eq!(
            LateDataPolicy::parse("drop-it"),
            Err(WindowSpecError::UnknownLateDataPolicy("drop-it".into()))
        );
        assert_eq!(LateDataPolicy::default(), Drop);
        assert_eq!(CountWindowSpec::new(0), Err(WindowSpecError::ZeroCount));
    }

    #[test]
    fn tumbling() {
        let mut agg = SumAgg::default();
        let mut w = RangeWindows::new(spec(10, 10, 0, LateDataPolicy::Drop), 100, 0);
        assert_eq!(w.anchor_ns(), 100);
        assert_eq!(w.next_window_start_ns(), 100);
        assert_eq!(w.next_due_watermark_ns(), 110);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (105, 2), (109, 3)], &mut out);
        assert!(
            out.is_empty(),
            "window [100,110) not due before watermark 110"
        );
        send(&mut w, &mut agg, &[(110, 4)], &mut out);
        assert_eq!(summary(&out), vec![(6, 3, 109)]);
        out.clear();
        send(&mut w, &mut agg, &[(125, 5)], &mut out);
        assert_eq!(summary(&out), vec![(4, 1, 119)]);
        assert_eq!(out[0].value.key, KEY);
        out.clear();
        w.on_timer(&mut agg, KEY, 129, &mut out).unwrap();
        assert!(out.is_empty());
        w.flush(&mut agg, KEY, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(5, 1, 129)]);
        assert!(w.is_empty());
    }

    #[test]
    fn offset_moves_the_grid() {
        let mut agg = SumAgg::default();
        let s = spec(10, 10, 0, LateDataPolicy::Drop);
        let mut w = RangeWindows::new(s, 100, 7);
        assert_eq!(w.anchor_ns(), 93);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (102, 2), (103, 4)], &mut out);
        assert_eq!(
            summary(&out),
            vec![(3, 2, 102)],
            "[93,103) fires at watermark 103"
        );
    }

    #[test]
    fn sliding_message_in_three_windows() {
        let mut agg = SumAgg::default();
        let mut w = RangeWindows::new(spec(30, 10, 0, LateDataPolicy::Drop), 100, 0);
        // The earliest window is the first one containing the anchor.
        assert_eq!(w.next_window_start_ns(), 80);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (125, 2)], &mut out);
        // Due at 125: windows whose last ns < 125: [80,110) and [90,120).
        assert_eq!(summary(&out), vec![(1, 1, 109), (1, 1, 119)]);
        out.clear();
        w.flush(&mut agg, KEY, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(3, 2, 129), (2, 1, 139), (2, 1, 149)]);
        assert!(w.is_empty());
    }

    #[test]
    fn uneven_slide_uses_gcd_panes() {
        // range 5, slide 2: panes of 1 ns; windows [A+2w, A+2w+5).
        let mut agg = SumAgg::default();
        let mut w = RangeWindows::new(spec(5, 2, 0, LateDataPolicy::Drop), 0, 0);
        assert_eq!(w.next_window_start_ns(), -4);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(0, 1), (3, 10), (4, 100)], &mut out);
        w.flush(&mut agg, KEY, &mut out).unwrap();
        // Windows: [-4,1) [-2,3) [0,5) [2,7) [4,9)
        assert_eq!(
            summary(&out),
            vec![(1, 1, 0), (1, 1, 2), (111, 3, 4), (110, 2, 6), (100, 1, 8)]
        );
    }

    #[test]
    fn delay_is_rounded_and_respected() {
        let mut agg = SumAgg::default();
        // delay 15 rounds up to 20; anchor = 100 - 20.
        let mut w = RangeWindows::new(spec(10, 10, 15, LateDataPolicy::Drop), 100, 0);
        assert_eq!(w.anchor_ns(), 80);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1)], &mut out);
        assert!(out.is_empty());
        send(&mut w, &mut agg, &[(129, 2)], &mut out);
        // [80,90) and [90,100) are empty and due; [100,110) needs 110 + 20.
        assert_eq!(summary(&out), vec![(0, 0, 89), (0, 0, 99)]);
        out.clear();
        send(&mut w, &mut agg, &[(130, 4)], &mut out);
        assert_eq!(summary(&out), vec![(1, 1, 109)]);
        out.clear();
        // An event 20 ns behind the watermark is not late thanks to the delay.
        let p = w.on_message(&mut agg, KEY, &8, 111, 131, &mut out).unwrap();
        assert_eq!(p, Placement::OnTime);
        assert!(out.is_empty());
        w.on_timer(&mut agg, KEY, 140, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(8, 1, 119)]);
        out.clear();
        w.flush(&mut agg, KEY, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(2, 1, 129), (4, 1, 139)]);
    }

    type Summary = Vec<(u64, usize, i64)>;

    /// Fire window [100,110), then send an event at 105 (late); returns the
    /// placement, the outputs of that call and those of a final flush.
    fn late_scenario(policy: LateDataPolicy) -> (Placement, Summary, Summary) {
        let mut agg = SumAgg::default();
        let mut w = RangeWindows::new(spec(10, 10, 0, policy), 100, 0);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (110, 2)], &mut out);
        assert_eq!(summary(&out), vec![(1, 1, 109)]);
        out.clear();
        let p = w
            .on_message(&mut agg, KEY, &40, 105, 111, &mut out)
            .unwrap();
        let immediate = summary(&out);
        out.clear();
        w.flush(&mut agg, KEY, &mut out).unwrap();
        (p, immediate, summary(&out))
    }

    #[test]
    fn late_drop() {
        let (p, now, later) = late_scenario(LateDataPolicy::Drop);
        assert_eq!(p, Placement::LateDropped);
        assert!(now.is_empty());
        assert_eq!(later, vec![(2, 1, 119)]);
    }

    #[test]
    fn late_fire_per_message() {
        let (p, now, later) = late_scenario(LateDataPolicy::FirePerMessage);
        assert_eq!(p, Placement::LateFired);
        assert_eq!(
            now,
            vec![(40, 1, 105)],
            "output at once, with the message's event time"
        );
        assert_eq!(later, vec![(2, 1, 119)]);
    }

    #[test]
    fn late_place_in_oldest_window() {
        let (p, now, later) = late_scenario(LateDataPolicy::PlaceInOldestWindow);
        assert_eq!(p, Placement::LatePlacedInOldest);
        assert!(now.is_empty());
        assert_eq!(later, vec![(42, 2, 119)]);
    }

    #[test]
    fn late_placed_in_a_due_window_fires_in_the_same_call() {
        let mut agg = SumAgg::default();
        let s = spec(10, 10, 0, LateDataPolicy::PlaceInOldestWindow).with_max_empty_run(0);
        let mut w = RangeWindows::new(s, 100, 0);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (110, 2)], &mut out);
        out.clear();
        // Watermark 120 makes [110,120) due; the late message joins it first.
        w.on_message(&mut agg, KEY, &40, 50, 120, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(42, 2, 119)]);
    }

    #[test]
    fn placed_late_data_is_flushed() {
        // The oldest open window starts after every event time seen: the
        // flush must still reach it (a proptest regression).
        let mut agg = SumAgg::default();
        let mut w = RangeWindows::new(spec(1, 1, 0, LateDataPolicy::PlaceInOldestWindow), 64, 0);
        let mut out = Vec::new();
        w.on_message(&mut agg, KEY, &1, 64, 65, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(1, 1, 64)]);
        out.clear();
        let p = w.on_message(&mut agg, KEY, &2, 0, 65, &mut out).unwrap();
        assert_eq!(p, Placement::LatePlacedInOldest);
        w.flush(&mut agg, KEY, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(2, 1, 65)]);
        assert!(w.is_empty());
    }

    #[test]
    fn empty_windows_fire() {
        let mut agg = SumAgg::default();
        let s = spec(10, 10, 0, LateDataPolicy::Drop).with_max_empty_run(100);
        let mut w = RangeWindows::new(s, 100, 0);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (145, 2)], &mut out);
        assert_eq!(
            summary(&out),
            vec![(1, 1, 109), (0, 0, 119), (0, 0, 129), (0, 0, 139)]
        );
        // Empty windows get an identity accumulator and no combine call.
        assert_eq!(agg.combine_calls, 1);
        out.clear();
        w.on_timer(&mut agg, KEY, 175, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(2, 1, 149), (0, 0, 159), (0, 0, 169)]);

        // An output of None is no output.
        let mut agg = SumAgg {
            none_for_empty: true,
            ..SumAgg::default()
        };
        let mut w = RangeWindows::new(s, 100, 0);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (145, 2)], &mut out);
        assert_eq!(summary(&out), vec![(1, 1, 109)]);
    }

    #[test]
    fn long_gaps_fire_a_bounded_run_of_empty_windows() {
        let mut agg = SumAgg::default();
        let s = spec(10, 10, 0, LateDataPolicy::Drop);
        assert_eq!(s.max_empty_run(), 1);
        let mut w = RangeWindows::new(s.with_max_empty_run(2), 100, 0);
        let mut out = Vec::new();
        // A gap of ~10^12 windows: two empty windows fire, the rest are skipped.
        let far = 100 + 10_000_000_000_000;
        send(&mut w, &mut agg, &[(100, 1), (far, 2)], &mut out);
        assert_eq!(summary(&out), vec![(1, 1, 109), (0, 0, 119), (0, 0, 129)]);
        assert_eq!(w.next_window_start_ns(), far);
        out.clear();
        // The run bound holds across calls: more timers fire nothing more...
        w.on_timer(&mut agg, KEY, far + 9, &mut out).unwrap();
        assert!(out.is_empty());
        // ...until a window with data fires, which resets it.
        w.on_timer(&mut agg, KEY, far + 40, &mut out).unwrap();
        assert_eq!(
            summary(&out),
            vec![(2, 1, far + 9), (0, 0, far + 19), (0, 0, far + 29)]
        );
    }

    #[test]
    fn messages_beyond_the_horizon_are_kept() {
        let mut agg = SumAgg::default();
        let mut w = RangeWindows::new(spec(10, 5, 0, LateDataPolicy::Drop), 100, 0);
        let mut out = Vec::new();
        // The watermark lags (another upstream is slow): far events are kept.
        for (i, t) in [1_000_000i64, 100, 5_000, 1_000_003]
            .into_iter()
            .enumerate()
        {
            let p = w
                .on_message(&mut agg, KEY, &(i as u64 + 1), t, 101, &mut out)
                .unwrap();
            assert_eq!(p, Placement::OnTime);
        }
        assert!(out.is_empty());
        assert_eq!(w.panes().count(), 3);
        assert_eq!(w.highest_event_time_ns(), 1_000_003);
        w.flush(&mut agg, KEY, &mut out).unwrap();
        let with_data: Vec<_> = summary(&out).into_iter().filter(|o| o.1 > 0).collect();
        assert_eq!(
            with_data,
            vec![
                (2, 1, 104),
                (2, 1, 109),
                (3, 1, 5_004),
                (3, 1, 5_009),
                (5, 2, 1_000_004),
                (5, 2, 1_000_009),
            ]
        );
        assert!(w.is_empty());
    }

    #[test]
    fn update_error_leaves_the_message_uncounted() {
        let mut agg = SumAgg {
            fail_update_on: Some(13),
            ..SumAgg::default()
        };
        let mut w = RangeWindows::new(spec(10, 10, 0, LateDataPolicy::Drop), 100, 0);
        let mut out = Vec::new();
        // A fresh pane whose first update fails is discarded.
        assert!(w
            .on_message(&mut agg, KEY, &13, 100, 100, &mut out)
            .is_err());
        assert!(w.is_empty());
        send(&mut w, &mut agg, &[(101, 1)], &mut out);
        assert!(w
            .on_message(&mut agg, KEY, &13, 102, 102, &mut out)
            .is_err());
        // A failing message fires nothing, even when windows are due.
        assert!(w
            .on_message(&mut agg, KEY, &13, 112, 112, &mut out)
            .is_err());
        assert!(out.is_empty());
        send(&mut w, &mut agg, &[(113, 2)], &mut out);
        assert_eq!(summary(&out), vec![(1, 1, 109)]);
        // Fire-per-message errors propagate too, and change nothing.
        let mut w = RangeWindows::new(spec(10, 10, 0, LateDataPolicy::FirePerMessage), 100, 0);
        let mut out = Vec::new();
        assert!(w.on_message(&mut agg, KEY, &13, 50, 100, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn output_error_consumes_the_window() {
        let mut agg = SumAgg {
            fail_output_on_sum: Some(7),
            ..SumAgg::default()
        };
        let s = spec(10, 10, 0, LateDataPolicy::Drop).with_max_empty_run(0);
        let mut w = RangeWindows::new(s, 100, 0);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (110, 7)], &mut out);
        assert_eq!(summary(&out), vec![(1, 1, 109)]);
        out.clear();
        w.on_message(&mut agg, KEY, &3, 120, 119, &mut out).unwrap();
        // [110,120) fails; [120,130) and [130,140) wait for the next call.
        let e = w.on_message(&mut agg, KEY, &4, 130, 140, &mut out);
        assert_eq!(e, Err("output failed on sum 7".to_string()));
        assert!(out.is_empty());
        assert_eq!(w.next_window_start_ns(), 120);
        w.on_timer(&mut agg, KEY, 140, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(3, 1, 129), (4, 1, 139)]);
        out.clear();
        w.flush(&mut agg, KEY, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(w.is_empty());
    }

    #[test]
    fn snapshot_restore_and_errors() {
        let mut agg = SumAgg::default();
        let s = spec(30, 10, 0, LateDataPolicy::Drop);
        let mut w = RangeWindows::new(s, 100, 3);
        let mut out = Vec::new();
        send(&mut w, &mut agg, &[(100, 1), (115, 2), (131, 4)], &mut out);
        let snap = w.snapshot().try_map(|a| Ok::<_, ()>(a.clone())).unwrap();
        // Anchor 100 - 3; windows from 77 on; at 131 those starting at 77,
        // 87 and 97 have fired, and pane [97,107) was dropped with them.
        assert_eq!(snap.anchor_ns, 97);
        assert_eq!(snap.next_window_start_ns, 107);
        assert_eq!(snap.highest_event_time_ns, 131);
        assert_eq!(snap.panes, vec![(107, vec![2]), (127, vec![4])]);
        assert_eq!(w.clone().into_snapshot(), snap);
        let mut r = RangeWindows::restore(s, snap.clone()).unwrap();
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        w.flush(&mut agg, KEY, &mut o1).unwrap();
        r.flush(&mut agg, KEY, &mut o2).unwrap();
        assert_eq!(o1, o2);

        let bad = |f: &dyn Fn(&mut RangeWindowsSnapshot<Vec<u64>>)| {
            let mut b = snap.clone();
            f(&mut b);
            RangeWindows::restore(s, b).unwrap_err()
        };
        assert!(matches!(
            bad(&|b| b.next_window_start_ns += 1),
            RestoreError::MisalignedWindow { .. }
        ));
        assert!(matches!(
            bad(&|b| b.panes[1].0 += 1),
            RestoreError::MisalignedPane { .. }
        ));
        assert!(matches!(
            bad(&|b| b.panes[0].0 -= 10),
            RestoreError::PaneBeforeOpenWindow { .. }
        ));
        assert!(matches!(
            bad(&|b| b.panes.swap(0, 1)),
            RestoreError::PanesOutOfOrder { .. }
        ));
    }

    #[test]
    fn count_windows() {
        let mut agg = SumAgg::default();
        let mut c = CountWindows::new(CountWindowSpec::new(3).unwrap());
        let mut out = Vec::new();
        for (i, v) in [1u64, 2, 3, 4, 5].into_iter().enumerate() {
            c.on_message(&mut agg, KEY, &v, 10 + i as i64, &mut out)
                .unwrap();
        }
        assert_eq!(summary(&out), vec![(6, 3, 12)]);
        assert_eq!(c.count(), 2);
        assert_eq!(c.accumulator(), Some(&vec![4, 5]));
        out.clear();
        c.flush_partial(&mut agg, KEY, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(9, 2, 14)]);
        out.clear();
        c.flush_partial(&mut agg, KEY, &mut out).unwrap();
        assert!(out.is_empty(), "an empty partial window emits nothing");
        assert_eq!(c.accumulator(), None);

        // n = 1 outputs every message.
        let mut c = CountWindows::new(CountWindowSpec::new(1).unwrap());
        for v in [7u64, 8] {
            c.on_message(&mut agg, KEY, &v, 1, &mut out).unwrap();
        }
        assert_eq!(summary(&out), vec![(7, 1, 1), (8, 1, 1)]);
    }

    #[test]
    fn count_window_errors_and_snapshots() {
        let mut agg = SumAgg {
            fail_update_on: Some(13),
            fail_output_on_sum: Some(5),
            ..SumAgg::default()
        };
        let spec2 = CountWindowSpec::new(2).unwrap();
        let mut c = CountWindows::new(spec2);
        let mut out = Vec::new();
        assert!(c.on_message(&mut agg, KEY, &13, 0, &mut out).is_err());
        assert_eq!((c.count(), c.accumulator()), (0, None), "not counted");
        c.on_message(&mut agg, KEY, &1, 0, &mut out).unwrap();
        assert!(c.on_message(&mut agg, KEY, &13, 0, &mut out).is_err());
        assert_eq!(c.count(), 1);
        // Snapshot mid-window, restore, continue.
        let snap = c.snapshot().try_map(|a| Ok::<_, ()>(a.clone())).unwrap();
        assert_eq!(
            snap,
            CountWindowsSnapshot {
                count: 1,
                acc: Some(vec![1]),
                max_event_time_ns: 0
            }
        );
        let mut r = CountWindows::restore(spec2, snap.clone()).unwrap();
        r.on_message(&mut agg, KEY, &2, 3, &mut out).unwrap();
        assert_eq!(summary(&out), vec![(3, 2, 3)]);
        // A failing output still resets the window.
        out.clear();
        r.on_message(&mut agg, KEY, &2, 4, &mut out).unwrap();
        assert!(r.on_message(&mut agg, KEY, &3, 5, &mut out).is_err());
        assert_eq!((r.count(), r.accumulator()), (0, None));
        assert!(out.is_empty());

        assert_eq!(
            CountWindows::restore(
                spec2,
                CountWindowsSnapshot {
                    count: 2,
                    acc: Some(vec![1, 1]),
                    max_event_time_ns: 0
                }
            )
            .unwrap_err(),
            RestoreError::CountOutOfRange { count: 2, n: 2 }
        );
        assert!(matches!(
            CountWindows::<Vec<u64>>::restore(
                spec2,
                CountWindowsSnapshot {
                    count: 1,
                    acc: None,
                    max_event_time_ns: 0
                }
            ),
            Err(RestoreError::CountAccMismatch { .. })
        ));
        assert_eq!(c.into_snapshot(), snap);
    }

    // ---------------- properties ----------------

    /// In-order event times (watermark = event time) from positive deltas.
    fn in_order_times(start: i64, deltas: &[u64]) -> Vec<i64> {
        let mut t = start;
        deltas
            .iter()
            .map(|d| {
                t += *d as i64;
                t
            })
            .collect()
    }

    /// Item -> how many outputs hold it.
    fn multiplicity(out: &[WindowOutput<Out>], n: usize) -> Vec<usize> {
        let mut m = vec![0; n];
        for o in out {
            for &i in &o.value.items {
                m[i as usize] += 1;
            }
        }
        m
    }

    proptest! {
        #[test]
        fn tumbling_conserves_the_total(
            range in 1u64..50,
            delay in 0u64..100,
            offset_r in any::<u64>(),
            start in -1_000i64..1_000,
            msgs in prop::collection::vec((0u64..150, 0u64..1_000), 0..60),
        ) {
            let s = spec(range, range, delay, LateDataPolicy::Drop);
            let mut w = RangeWindows::new(s, start, s.offset_from_random(offset_r));
            let mut agg = SumAgg::default();
            let mut out = Vec::new();
            let times = in_order_times(start, &msgs.iter().map(|m| m.0).collect::<Vec<_>>());
            for (t, (_, v)) in times.iter().zip(&msgs) {
                let p = w.on_message(&mut agg, KEY, v, *t, *t, &mut out).unwrap();
                prop_assert_eq!(p, Placement::OnTime);
            }
            w.flush(&mut agg, KEY, &mut out).unwrap();
            prop_assert!(w.is_empty());
            let total: u64 = msgs.iter().map(|m| m.1).sum();
            prop_assert_eq!(out.iter().map(|o| o.value.sum).sum::<u64>(), total);
            prop_assert_eq!(out.iter().map(|o| o.value.count).sum::<usize>(), msgs.len());
            // Outputs come out in window order.
            prop_assert!(out.windows(2).all(|p| p[0].event_time < p[1].event_time));
        }

        /// The executor's idle timer: `on_timer` at rising watermarks capped
        /// at `flush_due_watermark_ns` fires exactly what `flush` fires, in
        /// the same order, and then has nothing left below the cap.
        #[test]
        fn timer_capped_at_flush_due_fires_what_flush_fires(
            slide in 1u64..20,
            k in 1u64..6,
            delay in 0u64..60,
            offset_r in any::<u64>(),
            deltas in prop::collection::vec(0u64..80, 1..50),
            steps in prop::collection::vec(1i64..40, 1..80),
        ) {
            let s = spec(k * slide, slide, delay, LateDataPolicy::Drop);
            let mut a = RangeWindows::new(s, 1_000, s.offset_from_random(offset_r));
            let mut agg = SumAgg::default();
            let mut sent = Vec::new();
            let times = in_order_times(1_000, &deltas);
            for (i, t) in times.iter().enumerate() {
                a.on_message(&mut agg, KEY, &(i as u64), *t, *t, &mut sent).unwrap();
            }
            let mut b = RangeWindows::restore(s, a.snapshot().try_map(|acc| Ok::<_, ()>(acc.clone())).unwrap()).unwrap();
            let mut by_flush = Vec::new();
            a.flush(&mut agg, KEY, &mut by_flush).unwrap();
            let cap = b.flush_due_watermark_ns();
            let mut by_timer = Vec::new();
            let mut wm = *times.last().unwrap();
            for step in steps {
                wm += step;
                b.on_timer(&mut agg, KEY, wm.min(cap), &mut by_timer).unwrap();
            }
            b.on_timer(&mut agg, KEY, cap, &mut by_timer).unwrap();
            prop_assert_eq!(&by_timer, &by_flush);
            prop_assert!(b.next_due_watermark_ns() > b.flush_due_watermark_ns());
        }

        #[test]
        fn sliding_counts_each_input_k_times(
            slide in 1u64..20,
            k in 1u64..6,
            delay in 0u64..60,
            offset_r in any::<u64>(),
            deltas in prop::collection::vec(0u64..80, 0..50),
        ) {
            let s = spec(k * slide, slide, delay, LateDataPolicy::Drop);
            let mut w = RangeWindows::new(s, 1_000, s.offset_from_random(offset_r));
            let mut agg = SumAgg::default();
            let mut out = Vec::new();
            let times = in_order_times(1_000, &deltas);
            for (i, t) in times.iter().enumerate() {
                w.on_message(&mut agg, KEY, &(i as u64), *t, *t, &mut out).unwrap();
            }
            w.flush(&mut agg, KEY, &mut out).unwrap();
            let m = multiplicity(&out, times.len());
            prop_assert!(m.iter().all(|&c| c as u64 == k), "{:?}", m);
        }

        #[test]
        fn any_range_and_slide_match_a_brute_force_grid(
            range in 1u64..40,
            slide_r in any::<u64>(),
            delay in 0u64..60,
            offset_r in any::<u64>(),
            deltas in prop::collection::vec(0u64..50, 0..40),
        ) {
            let slide = 1 + slide_r % range;
            let s = spec(range, slide, delay, LateDataPolicy::Drop);
            let mut w = RangeWindows::new(s, -500, s.offset_from_random(offset_r));
            let a = w.anchor_ns();
            let mut agg = SumAgg::default();
            let mut out = Vec::new();
            let times = in_order_times(-500, &deltas);
            for (i, t) in times.iter().enumerate() {
                w.on_message(&mut agg, KEY, &(i as u64), *t, *t, &mut out).unwrap();
            }
            w.flush(&mut agg, KEY, &mut out).unwrap();
            let (r, sl) = (range as i64, slide as i64);
            for o in &out {
                // The event time is the last ns of a window on the grid...
                let start = o.event_time - r + 1;
                prop_assert_eq!((start - a).rem_euclid(sl), 0);
                // ...that contains every item it holds.
                for &i in &o.value.items {
                    let t = times[i as usize];
                    prop_assert!(start <= t && t <= o.event_time);
                }
            }
            let m = multiplicity(&out, times.len());
            for (i, &t) in times.iter().enumerate() {
                let x = t - a;
                let windows = x.div_euclid(sl) - (x - r + 1 + sl - 1).div_euclid(sl) + 1;
                prop_assert_eq!(m[i] as i64, windows, "item {} at {}", i, t);
            }
        }

        #[test]
        fn out_of_order_input_follows_the_policy(
            range in 1u64..30,
            policy in prop::sample::select(vec![
                LateDataPolicy::Drop,
                LateDataPolicy::FirePerMessage,
                LateDataPolicy::PlaceInOldestWindow,
            ]),
            times in prop::collection::vec(0i64..500, 1..60),
            lead in prop::collection::vec(0i64..40, 60),
        ) {
            let s = spec(range, range, 0, policy);
            let mut w = RangeWindows::new(s, times[0], 0);
            let mut agg = SumAgg::default();
            let mut out = Vec::new();
            let mut wm = i64::MIN;
            let mut on_time = Vec::new();
            for (i, &t) in times.iter().enumerate() {
                wm = wm.max(t + lead[i]);
                let late = t < w.next_window_start_ns();
                let p = w.on_message(&mut agg, KEY, &(i as u64), t, wm, &mut out).unwrap();
                let expected = match (late, policy) {
                    (false, _) => Placement::OnTime,
                    (true, LateDataPolicy::Drop) => Placement::LateDropped,
                    (true, LateDataPolicy::FirePerMessage) => Placement::LateFired,
                    (true, LateDataPolicy::PlaceInOldestWindow) => Placement::LatePlacedInOldest,
                };
                prop_assert_eq!(p, expected);
                if p == Placement::OnTime {
                    on_time.push(i);
                }
            }
            w.flush(&mut agg, KEY, &mut out).unwrap();
            let m = multiplicity(&out, times.len());
            for (i, &c) in m.iter().enumerate() {
                let want = match policy {
                    LateDataPolicy::Drop => usize::from(on_time.contains(&i)),
                    _ => 1,
                };
                prop_assert_eq!(c, want, "item {}", i);
            }
        }

        #[test]
        fn snapshot_restore_continues_identically(
            range in 1u64..30,
            slide_r in any::<u64>(),
            delay in 0u64..40,
            policy in prop::sample::select(vec![
                LateDataPolicy::Drop,
                LateDataPolicy::FirePerMessage,
                LateDataPolicy::PlaceInOldestWindow,
            ]),
            ops in prop::collection::vec((-20i64..60, 0i64..30, any::<bool>()), 1..50),
            cut in any::<prop::sample::Index>(),
        ) {
            let s = spec(range, 1 + slide_r % range, delay, policy);
            let run = |snapshot_at: Option<usize>| {
                let mut w = RangeWindows::new(s, 0, 0);
                let mut agg = SumAgg::default();
                let mut out = Vec::new();
                let (mut t, mut wm) = (0i64, 0i64);
                for (i, &(dt, lead, timer)) in ops.iter().enumerate() {
                    if snapshot_at == Some(i) {
                        let snap = w.snapshot().try_map(|a: &Vec<u64>| Ok::<_, ()>(a.clone())).unwrap();
                        w = RangeWindows::restore(s, snap).unwrap();
                    }
                    t += dt;
                    wm = wm.max(t + lead);
                    if timer {
                        w.on_timer(&mut agg, KEY, wm, &mut out).unwrap();
                    } else {
                        let p = w.on_message(&mut agg, KEY, &(i as u64), t, wm, &mut out).unwrap();
                        out.push(WindowOutput {
                            value: Out { key: vec![], sum: 0, count: 0, items: vec![] },
                            event_time: p as i64,
                        });
                    }
                }
                w.flush(&mut agg, KEY, &mut out).unwrap();
                out
            };
            prop_assert_eq!(run(None), run(Some(cut.index(ops.len()))));
        }

        #[test]
        fn count_windows_conserve_and_respect_n(
            n in 1u64..6,
            ops in prop::collection::vec((0u64..100, any::<bool>()), 0..60),
            cut in any::<prop::sample::Index>(),
        ) {
            let spec_n = CountWindowSpec::new(n).unwrap();
            let mut c = CountWindows::new(spec_n);
            let mut agg = SumAgg::default();
            let mut out = Vec::new();
            let cut = cut.index(ops.len() + 1);
            for (i, &(v, flush)) in ops.iter().enumerate() {
                if i == cut {
                    let snap = c.snapshot().try_map(|a: &Vec<u64>| Ok::<_, ()>(a.clone())).unwrap();
                    c = CountWindows::restore(spec_n, snap).unwrap();
                }
                let before = out.len();
                c.on_message(&mut agg, KEY, &v, i as i64, &mut out).unwrap();
                if out.len() > before {
                    prop_assert_eq!(out.last().unwrap().value.count as u64, n);
                    prop_assert_eq!(out.last().unwrap().event_time, i as i64);
                }
                prop_assert!(c.count() < n);
                prop_assert_eq!(c.count() > 0, c.accumulator().is_some());
                if flush {
                    c.flush_partial(&mut agg, KEY, &mut out).unwrap();
                    prop_assert_eq!(c.count(), 0);
                }
            }
            c.flush_partial(&mut agg, KEY, &mut out).unwrap();
            prop_assert!(out.iter().all(|o| o.value.count >= 1 && o.value.count as u64 <= n));
            prop_assert_eq!(out.iter().map(|o| o.value.sum).sum::<u64>(), ops.iter().map(|o| o.0).sum::<u64>());
            prop_assert_eq!(out.iter().map(|o| o.value.count).sum::<usize>(), ops.len());
        }
    }
}
