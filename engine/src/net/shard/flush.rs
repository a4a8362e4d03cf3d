//! When a shard writes room deliveries: at once, after a fixed delay, or — the
//! default, `runtime.flush_delay: auto` — after a delay the shard turns on only
//! while it is saturated and while the delay really puts several frames in each
//! `send()`.
//!
//! Why: a send costs about the same for one frame as for many (on loopback it
//! also pays the receiver's TCP work), so at a high fixed message rate most of a
//! shard's CPU goes to sends that each carry one frame. Holding write-ready
//! members for a millisecond or two lets the next messages join them. At a low
//! rate the same hold only adds latency, so `auto` decides from the shard's own
//! load, measured over short windows:
//!
//! - **enter** holding, for an eighth of `flush_delay_max`, when the executor was
//!   busy for at least [`ENTER_LOAD`] of a window (it is CPU-bound and its
//!   queues are about to grow, so latency is rising anyway) and its writes carry
//!   fewer than [`BATCHED_ENOUGH`] frames each (beyond that a send's fixed cost
//!   is already spread thin: a hold would add latency and save little);
//! - **double** the hold, up to `flush_delay_max`, for every window that is
//!   still that busy: the hold settles at the first step that leaves CPU spare;
//! - **stay** while load is above [`EXIT_LOAD`] (holding lowers the load it
//!   needs, so a lower exit threshold keeps it from flapping) and writes average
//!   at least [`MIN_FRAMES_PER_WRITE`] frames (the hold is buying something);
//! - otherwise **leave** holding: writes go out as soon as frames are queued;
//! - and **back off** for [`COOLDOWN_WINDOWS`] when the frames written per second
//!   (smoothed over about five windows, so the hold's own burstiness does not
//!   count) fell by more than [`MAX_RATE_LOSS`] against the rate before the hold:
//!   the senders wait for their own deliveries (a closed loop, like a publisher
//!   with a window of unacknowledged messages), so the hold costs throughput
//!   instead of saving CPU. At a fixed offered rate the frames per second do not
//!   fall, and the hold stays.
//!
//! Only room deliveries are held; a direct reply (echo, an error frame, a
//! request/response exchange) is always written at once.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::config::FlushDelay;

/// Length of one load-measurement window.
pub(crate) const WINDOW: Duration = Duration::from_millis(20);
/// Busy share of a window that turns holding on.
pub(crate) const ENTER_LOAD: f64 = 0.90;
/// Busy share below which holding turns off again.
pub(crate) const EXIT_LOAD: f64 = 0.40;
/// Frames per write below which holding is not worth its latency.
pub(crate) const MIN_FRAMES_PER_WRITE: f64 = 1.25;
/// Frames per write at which a saturated shard is already batching well enough.
pub(crate) const BATCHED_ENOUGH: f64 = 16.0;
/// Share of the entry window's frames/s a hold may lose before it is dropped.
pub(crate) const MAX_RATE_LOSS: f64 = 0.15;
/// Windows without holding after a hold cost throughput (1 s).
pub(crate) const COOLDOWN_WINDOWS: u32 = 50;
/// Weight of the newest window in the smoothed frames/s.
const RATE_SMOOTHING: f64 = 0.2;
/// Windows a hold runs before its rate is judged.
const JUDGE_AFTER_WINDOWS: u32 = 5;

/// What the policy carries from one window to the next.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct State {
    /// The hold in force (zero: write at once).
    pub hold: Duration,
    /// Smoothed frames per second before the current hold started.
    pub entry_rate: f64,
    /// Smoothed frames per second now.
    pub rate: f64,
    /// Windows the current hold has run.
    pub held_windows: u32,
    /// Windows left before holding may start again.
    pub cooldown: u32,
}

/// One window's measurements, as deltas.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Wall time the window covered.
    pub wall: Duration,
    /// Time the executor spent running tasks in it.
    pub busy: Duration,
    /// Frames and writes (sends) it completed.
    pub frames: u64,
    pub writes: u64,
}

/// Decides how long room deliveries wait before they are written.
#[derive(Debug)]
pub(crate) struct FlushPolicy {
    config: FlushDelay,
    /// The hold in force now and what it was decided from.
    state: Cell<State>,
    /// Where the current window started, and the counters at that point.
    window: Cell<Option<WindowStart>>,
}

#[derive(Debug, Clone, Copy)]
struct WindowStart {
    at: Instant,
    busy: Duration,
    frames: u64,
    writes: u64,
}

impl FlushPolicy {
    pub(crate) fn new(config: FlushDelay) -> Self {
        let current = match config {
            FlushDelay::Fixed(d) => d,
            FlushDelay::Auto { .. } => Duration::ZERO,
        };
        Self {
            config,
            state: Cell::new(State {
                hold: current,
                ..State::default()
            }),
            window: Cell::new(None),
        }
    }

    /// How long a room delivery may wait now.
    #[inline]
    pub(crate) fn delay(&self) -> Duration {
        self.state.get().hold
    }

    /// Whether the delay adapts (the shard should call [`Self::observe`]).
    pub(crate) fn is_auto(&self) -> bool {
        matches!(self.config, FlushDelay::Auto { .. })
    }

    /// Called often (once per driver batch): when a window has passed, read the
    /// running totals from `totals` — the thread's CPU time (user and kernel: the
    /// sends are most of it), frames and writes so far — and re-decide the hold.
    /// Returns the new hold when a window ended.
    pub(crate) fn observe(
        &self,
        now: Instant,
        totals: impl FnOnce() -> (Duration, u64, u64),
    ) -> Option<Duration> {
        let FlushDelay::Auto { max } = self.config else {
            return None;
        };
        if let Some(w) = self.window.get() {
            if now.saturating_duration_since(w.at) < WINDOW {
                return None;
            }
        }
        let (busy, frames, writes) = totals();
        let start = WindowStart {
            at: now,
            busy,
            frames,
            writes,
        };
        // The first call only starts a window.
        let w = self.window.replace(Some(start))?;
        let wall = now.saturating_duration_since(w.at);
        let sample = Sample {
            wall,
            busy: busy.saturating_sub(w.busy),
            frames: frames.saturating_sub(w.frames),
            writes: writes.saturating_sub(w.writes),
        };
        let next = decide(self.state.get(), max, &sample);
        self.state.set(next);
        Some(next.hold)
    }
}

/// The state for the next window, from the current one and what it measured.
pub(crate) fn decide(st: State, max: Duration, s: &Sample) -> State {
    // A gap much longer than a window means the shard was idle in between:
    // whatever the load was before, it is not now.
    if s.wall > WINDOW * 5 {
        return State::default();
    }
    let secs = s.wall.as_secs_f64().max(1e-9);
    let load = s.busy.as_secs_f64() / secs;
    let window_rate = s.frames as f64 / secs;
    let rate = if st.rate == 0.0 {
        window_rate
    } else {
        st.rate + RATE_SMOOTHING * (window_rate - st.rate)
    };
    let not_holding = State {
        rate,
        cooldown: st.cooldown.saturating_sub(1),
        ..State::default()
    };
    let frames_per_write = if s.writes == 0 {
        0.0
    } else {
        s.frames as f64 / s.writes as f64
    };
    if st.hold.is_zero() {
        if load >= ENTER_LOAD && st.cooldown == 0 && frames_per_write < BATCHED_ENOUGH {
            State {
                hold: (max / 8).max(Duration::from_micros(100)).min(max),
                entry_rate: rate,
                rate,
                held_windows: 0,
                cooldown: 0,
            }
        } else {
            not_holding
        }
    } else {
        let held_windows = st.held_windows + 1;
        if held_windows >= JUDGE_AFTER_WINDOWS && rate < st.entry_rate * (1.0 - MAX_RATE_LOSS) {
            State {
                rate,
                cooldown: COOLDOWN_WINDOWS,
                ..State::default()
            }
        } else if load < EXIT_LOAD || frames_per_write < MIN_FRAMES_PER_WRITE {
            State {
                rate,
                ..State::default()
            }
        } else if load >= ENTER_LOAD {
            State {
                hold: (st.hold * 2).min(max),
                rate,
                held_windows,
                ..st
            }
        } else {
            State {
                rate,
                held_windows,
                ..st
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_millis(8);
    const FIRST: Duration = Duration::from_millis(1);

    /// A window at `load` that wrote `frames` frames in `writes` sends.
    fn sample(load: f64, frames: u64, writes: u64) -> Sample {
        Sample {
            wall: WINDOW,
            busy: WINDOW.mul_f64(load),
            frames,
            writes,
        }
    }

    fn holding(hold: Duration, entry_frames: u64) -> State {
        let rate = entry_frames as f64 / WINDOW.as_secs_f64();
        State {
            hold,
            entry_rate: rate,
            rate,
            held_windows: 0,
            cooldown: 0,
        }
    }

    #[test]
    fn an_unsaturated_shard_never_holds() {
        for load in [0.3, 0.64, 0.89] {
            let st = decide(State::default(), MAX, &sample(load, 100, 100));
            assert_eq!(st.hold, Duration::ZERO, "load {load}");
        }
    }

    #[test]
    fn a_saturated_shard_starts_holding_and_doubles_up_to_the_max() {
        let mut st = decide(State::default(), MAX, &sample(0.95, 1000, 1000));
        assert_eq!(st.hold, FIRST);
        // A fixed offered rate: the frames per second stay while the hold grows.
        for expect in [2, 4, 8, 8] {
            st = decide(st, MAX, &sample(0.95, 1000, 300));
            assert_eq!(st.hold, Duration::from_millis(expect));
        }
    }

    #[test]
    fn holding_stays_while_it_batches_and_the_shard_is_busy() {
        // At 1,000 msg/s a 2 ms hold gives ~2 frames per write and ~66 % load.
        let two = Duration::from_millis(2);
        let st = decide(holding(two, 2000), MAX, &sample(0.66, 2000, 1000));
        assert_eq!(st.hold, two);
    }

    #[test]
    fn holding_stops_when_it_buys_nothing() {
        // Request/response traffic or a low per-member rate: one frame per write.
        let st = decide(holding(MAX, 1000), MAX, &sample(0.95, 1000, 1000));
        assert_eq!((st.hold, st.cooldown), (Duration::ZERO, 0));
        let st = decide(holding(MAX, 0), MAX, &sample(0.95, 0, 0));
        assert_eq!((st.hold, st.cooldown), (Duration::ZERO, 0));
    }

    #[test]
    fn holding_stops_when_load_falls() {
        let st = decide(holding(MAX, 5000), MAX, &sample(0.30, 5000, 1000));
        assert_eq!(st.hold, Duration::ZERO);
    }

    #[test]
    fn a_hold_that_costs_throughput_backs_off_for_a_while() {
        // A publisher with a window of unacknowledged messages: the hold adds to
        // its round trip, so fewer frames per second are written.
        let mut st = holding(FIRST * 4, 10_000);
        // One bursty window proves nothing; a sustained loss does.
        st = decide(st, MAX, &sample(0.75, 6_000, 100));
        assert_eq!(st.hold, FIRST * 4);
        let mut windows = 1;
        while !st.hold.is_zero() {
            st = decide(st, MAX, &sample(0.75, 7_000, 110));
            windows += 1;
            assert!(windows <= 10, "a 30 % loss must end the hold");
        }
        assert!(
            windows >= JUDGE_AFTER_WINDOWS,
            "judged after {windows} windows"
        );
        assert_eq!(st.cooldown, COOLDOWN_WINDOWS);
        // Saturated again during the cool-down: no hold until it has run out.
        for _ in 0..COOLDOWN_WINDOWS {
            st = decide(st, MAX, &sample(0.99, 10_000, 1000));
            assert_eq!(st.hold, Duration::ZERO);
        }
        assert_eq!(decide(st, MAX, &sample(0.99, 10_000, 1000)).hold, FIRST);
    }

    #[test]
    fn a_shard_that_already_batches_well_does_not_hold() {
        // Max-rate fan-out: 64 frames per write without any hold.
        let st = decide(State::default(), MAX, &sample(1.0, 64_000, 1000));
        assert_eq!(st.hold, Duration::ZERO);
    }

    #[test]
    fn a_fixed_rate_hold_survives_bursty_windows() {
        // An 8 ms hold makes writes bursty: windows alternate between more and
        // fewer frames, but the offered rate (10,000 frames a window) holds.
        let mut st = holding(MAX, 10_000);
        for i in 0..40 {
            let frames = if i % 2 == 0 { 7_000 } else { 13_000 };
            st = decide(st, MAX, &sample(0.7, frames, 700));
            assert_eq!(st.hold, MAX, "window {i}");
        }
    }

    #[test]
    fn an_idle_gap_resets_the_hold() {
        let mut s = sample(0.0, 0, 0);
        s.wall = WINDOW * 50;
        s.busy = WINDOW * 49;
        assert_eq!(decide(holding(MAX, 100), MAX, &s), State::default());
    }

    #[test]
    fn observe_decides_once_per_window() {
        let p = FlushPolicy::new(FlushDelay::Auto { max: MAX });
        let t0 = Instant::now();
        assert_eq!(p.observe(t0, || (Duration::ZERO, 0, 0)), None);
        // Half a window, fully busy: too early to decide (nor to read the totals).
        let early = p.observe(t0 + WINDOW / 2, || unreachable!("read mid-window"));
        assert_eq!(early, None);
        assert_eq!(p.delay(), Duration::ZERO);
        let hold = p.observe(t0 + WINDOW, || (WINDOW, 20, 20));
        assert_eq!((hold, p.delay()), (Some(FIRST), FIRST));
    }

    #[test]
    fn a_fixed_delay_never_changes() {
        let p = FlushPolicy::new(FlushDelay::Fixed(MAX));
        let t0 = Instant::now();
        assert_eq!(p.observe(t0, || (Duration::ZERO, 0, 0)), None);
        assert_eq!(p.observe(t0 + WINDOW * 2, || (WINDOW * 2, 0, 0)), None);
        assert_eq!(p.delay(), MAX);
        assert!(!p.is_auto());
    }
}
