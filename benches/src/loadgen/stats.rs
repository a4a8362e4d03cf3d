//! Process-wide measurement state: the clock, the measured window, global
//! atomic counters, and per-thread histograms (merged at the end) so that the
//! hot path never contends on a shared lock and no histogram is per connection.
//!
//! Timestamps are ns since the process epoch; payloads carry them on the
//! machine-wide `CLOCK_MONOTONIC` ([`to_shared`], [`from_shared`]) so that one
//! loadgen process can time messages another one published.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The process epoch and its `CLOCK_MONOTONIC` reading in ns.
static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();

/// `CLOCK_MONOTONIC` in ns: the clock every process on the machine shares
/// (and the one `Instant` reads on Linux).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn epoch_pair() -> (Instant, u64) {
    // CLOCK_MONOTONIC is read before the Instant: a preemption between the two
    // reads then makes shared timestamps a little early, never later than the
    // clock itself (read in the other order, a timestamp could lie in the future).
    *EPOCH.get_or_init(|| {
        let mono = monotonic_ns();
        (Instant::now(), mono)
    })
}

/// Fixes the process epoch (call first thing in `main`).
pub fn init_clock() {
    let _ = epoch_pair();
}

/// The process epoch; every timestamp is relative to it.
pub fn epoch() -> Instant {
    epoch_pair().0
}

/// A process timestamp on the machine-wide monotonic clock (what payloads carry).
pub fn to_shared(ts: u64) -> u64 {
    ts.saturating_add(epoch_pair().1)
}

/// A machine-wide monotonic timestamp as ns since this process's epoch (0 if
/// it is older than the epoch: another process's message sent before we started).
pub fn from_shared(ts: u64) -> u64 {
    ts.saturating_sub(epoch_pair().1)
}

/// The instant `unix_secs` (wall clock, e.g. `date +%s`) names, as a process
/// instant; an instant in the past comes back as `now`.
pub fn instant_at_unix(unix_secs: f64) -> Instant {
    let now = Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let ahead = unix_secs - wall;
    if ahead > 0.0 {
        now + std::time::Duration::from_secs_f64(ahead)
    } else {
        now
    }
}

/// Monotonic nanoseconds since the process epoch.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Nanoseconds since the epoch of the instant `t`.
pub fn instant_ns(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// The measured window, as send timestamps `[start, end)` in ns since the epoch.
/// A message counts iff its send timestamp falls inside it.
#[derive(Debug)]
pub struct Window {
    start: AtomicU64,
    end: AtomicU64,
}

/// The process's measured window (empty until set).
pub static WINDOW: Window = Window {
    start: AtomicU64::new(u64::MAX),
    end: AtomicU64::new(u64::MAX),
};

impl Window {
    /// Sets the window.
    pub fn set(&self, start: u64, end: u64) {
        self.end.store(end, Relaxed);
        self.start.store(start, Relaxed);
    }

    /// Current `(start, end)`.
    pub fn get(&self) -> (u64, u64) {
        (self.start.load(Relaxed), self.end.load(Relaxed))
    }
}

/// Run phase, for progress lines.
pub static PHASE: AtomicU8 = AtomicU8::new(0);
/// Phase: opening connections.
pub const PHASE_RAMP: u8 = 0;
/// Phase: traffic flowing, not yet measured.
pub const PHASE_WARMUP: u8 = 1;
/// Phase: measured window.
pub const PHASE_MEASURE: u8 = 2;
/// Phase: waiting for in-flight messages.
pub const PHASE_DRAIN: u8 = 3;
/// Phase: holding idle connections.
pub const PHASE_HOLD: u8 = 4;

/// Name of a phase.
pub fn phase_name(p: u8) -> &'static str {
    match p {
        PHASE_RAMP => "ramp",
        PHASE_WARMUP => "warmup",
        PHASE_MEASURE => "measure",
        PHASE_DRAIN => "drain",
        _ => "hold",
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Global event counters (relaxed atomics; updated per connection event or per read).
        #[derive(Debug)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }
        impl Counters {
            const fn new() -> Self {
                Counters { $($name: AtomicU64::new(0),)* }
            }
        }
    };
}

counters! {
    /// Connection attempts finished (success or failure).
    attempts_done,
    /// Connections that completed the handshake.
    connected,
    /// Connection attempts that failed.
    failed,
    /// Connections currently open.
    live,
    /// Subscriber connections currently open (fanout, sse).
    live_subs,
    /// Connections the server ended (EOF, reset or close frame).
    closed_by_server,
    /// Close frames with code 1000.
    close_1000,
    /// Close frames with code 1001.
    close_1001,
    /// Close frames with code 1008 (slow consumer policy).
    close_1008,
    /// Close frames with code 1009.
    close_1009,
    /// Close frames with another or no code.
    close_other,
    /// Connections dropped because the server broke the protocol.
    protocol_errors,
    /// Failure: out of file descriptors.
    err_emfile,
    /// Failure: no local address/port available.
    err_addr,
    /// Failure: connection refused.
    err_refused,
    /// Failure: connection reset.
    err_reset,
    /// Failure: connect or handshake timeout.
    err_timeout,
    /// Failure: the server answered with a non-101 status.
    err_rejected,
    /// Failure: malformed handshake or EOF during it.
    err_handshake,
    /// Failure: anything else.
    err_other,
    /// Data messages received by subscribers (all, for progress and flow control).
    deliveries_total,
    /// Sequence gaps seen by subscribers (all, for flow control).
    gaps_total,
    /// Messages published (all).
    published_total,
    /// Echo replies received (all, for progress).
    replies_total,
}

/// The process's counters.
pub static COUNTERS: Counters = Counters::new();

impl Counters {
    /// Failure breakdown as JSON.
    pub fn errors_json(&self) -> Value {
        json!({
            "emfile": self.err_emfile.load(Relaxed),
            "addr_unavailable": self.err_addr.load(Relaxed),
            "refused": self.err_refused.load(Relaxed),
            "reset": self.err_reset.load(Relaxed),
            "timeout": self.err_timeout.load(Relaxed),
            "rejected": self.err_rejected.load(Relaxed),
            "handshake": self.err_handshake.load(Relaxed),
            "other": self.err_other.load(Relaxed),
        })
    }

    /// Server-side closes as JSON.
    pub fn closes_json(&self) -> Value {
        json!({
            "total": self.closed_by_server.load(Relaxed),
            "code_1000": self.close_1000.load(Relaxed),
            "code_1001": self.close_1001.load(Relaxed),
            "code_1008": self.close_1008.load(Relaxed),
            "code_1009": self.close_1009.load(Relaxed),
            "other_code": self.close_other.load(Relaxed),
            "protocol_errors": self.protocol_errors.load(Relaxed),
        })
    }

    /// Records a close frame's code.
    pub fn record_close_code(&self, code: Option<u16>) {
        let c = match code {
            Some(1000) => &self.close_1000,
            Some(1001) => &self.close_1001,
            Some(1008) => &self.close_1008,
            Some(1009) => &self.close_1009,
            _ => &self.close_other,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// A latency histogram in µs, 1 µs .. 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// Records a nanosecond duration into a µs histogram (clamped to its range).
#[inline]
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

/// Measurements owned by one runtime thread.
#[derive(Debug)]
pub struct ThreadStats {
    /// Latency of messages sent inside the window (µs).
    pub lat: Histogram<u64>,
    /// Latency of all messages since the last progress tick (µs).
    pub interval: Histogram<u64>,
    /// Publisher lag behind the fixed-rate schedule, inside the window (µs).
    pub lag: Histogram<u64>,
    /// Messages received whose send timestamp is inside the window.
    pub deliveries_window: u64,
    /// Sequence numbers skipped (window messages).
    pub gap_lost: u64,
    /// Messages arriving with a lower sequence than already seen (window messages).
    pub reordered: u64,
    /// Data messages that were not loadgen payloads of the expected size.
    pub foreign: u64,
    /// Messages published (fully written) with a timestamp inside the window.
    pub published_window: u64,
    /// HTTP publishers: TCP connect time of window POSTs (µs).
    pub post_connect: Histogram<u64>,
    /// HTTP publishers: POST start (connect) to complete 200 response, window POSTs (µs).
    pub post_ack: Histogram<u64>,
    /// Listen-only subscribers: per publisher id, the lowest and highest sequence
    /// number received with a window timestamp (`None` = none yet). Publishers
    /// number their messages without holes, so the span is what was published.
    pub window_seq: Vec<Option<(u64, u64)>>,
}

impl ThreadStats {
    fn new() -> Self {
        ThreadStats {
            lat: new_histogram(),
            interval: new_histogram(),
            lag: new_histogram(),
            deliveries_window: 0,
            gap_lost: 0,
            reordered: 0,
            foreign: 0,
            published_window: 0,
            post_connect: new_histogram(),
            post_ack: new_histogram(),
            window_seq: Vec::new(),
        }
    }

    /// Notes a window message `seq` from publisher `id` (listen-only accounting).
    pub fn note_window_seq(&mut self, id: usize, seq: u64) {
        if self.window_seq.len() <= id {
            self.window_seq.resize(id + 1, None);
        }
        let e = &mut self.window_seq[id];
        *e = Some(match *e {
            Some((lo, hi)) => (lo.min(seq), hi.max(seq)),
            None => (seq, seq),
        });
    }

    /// Merges another thread's per-publisher sequence spans into these.
    fn merge_window_seq(&mut self, other: &[Option<(u64, u64)>]) {
        for (id, span) in other.iter().enumerate() {
            if let Some((lo, hi)) = *span {
                self.note_window_seq(id, lo);
                self.note_window_seq(id, hi);
            }
        }
    }

    /// Messages published in the window as the received sequence numbers show
    /// them: the sum over publishers of `highest - lowest + 1`.
    pub fn window_seq_span(&self) -> u64 {
        self.window_seq
            .iter()
            .flatten()
            .map(|&(lo, hi)| hi - lo + 1)
            .sum()
    }
}

type Shared = Arc<Mutex<ThreadStats>>;

static REGISTRY: Mutex<Vec<Shared>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    static LOCAL: Shared = {
        let s = Arc::new(Mutex::new(ThreadStats::new()));
        lock(&REGISTRY).push(s.clone());
        s
    };
}

/// Runs `f` with this thread's stats (an uncontended lock; hold it per read, not per frame).
pub fn with_local<R>(f: impl FnOnce(&mut ThreadStats) -> R) -> R {
    LOCAL.with(|s| f(&mut lock(s)))
}

/// All threads' stats merged.
pub fn merged() -> ThreadStats {
    let mut out = ThreadStats::new();
    for s in lock(&REGISTRY).iter() {
        let s = lock(s);
        // Same bounds everywhere, so adding cannot fail.
        let _ = out.lat.add(&s.lat);
        let _ = out.lag.add(&s.lag);
        let _ = out.post_connect.add(&s.post_connect);
        let _ = out.post_ack.add(&s.post_ack);
        out.deliveries_window += s.deliveries_window;
        out.gap_lost += s.gap_lost;
        out.reordered += s.reordered;
        out.foreign += s.foreign;
        out.published_window += s.published_window;
        out.merge_window_seq(&s.window_seq);
    }
    out
}

/// Takes and resets every thread's interval histogram: `(p99 µs, count)`.
pub fn take_interval() -> (u64, u64) {
    let mut h = new_histogram();
    for s in lock(&REGISTRY).iter() {
        let mut s = lock(s);
        let _ = h.add(&s.interval);
        s.interval.reset();
    }
    (h.value_at_quantile(0.99), h.len())
}

/// Window latency p99 so far (µs) over all threads, or `None` if empty.
pub fn window_p99() -> Option<u64> {
    let mut h = new_histogram();
    for s in lock(&REGISTRY).iter() {
        let _ = h.add(&lock(s).lat);
    }
    (!h.is_empty()).then(|| h.value_at_quantile(0.99))
}

/// Percentile summary of a µs histogram (nulls when empty).
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": null, "p90": null, "p99": null, "p999": null, "max": null, "mean": null});
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// Formats µs compactly for progress lines.
pub fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{us}us")
    }
}

/// `(deliveries_window, published_window)` summed over threads (no histogram work).
pub fn window_counts() -> (u64, u64) {
    let mut d = 0;
    let mut p = 0;
    for s in lock(&REGISTRY).iter() {
        let s = lock(s);
        d += s.deliveries_window;
        p += s.published_window;
    }
    (d, p)
}

/// Listen-only: deliveries in the window and the messages the window's
/// sequence numbers show were published, summed over threads.
pub fn window_counts_listen() -> (u64, u64) {
    let mut all = ThreadStats::new();
    let mut d = 0;
    for s in lock(&REGISTRY).iter() {
        let s = lock(s);
        d += s.deliveries_window;
        all.merge_window_seq(&s.window_seq);
    }
    (d, all.window_seq_span())
}

/// Where progress output stands. On a terminal the progress line is redrawn
/// in place; elsewhere (pipes, CI, log files) every tick is its own line.
#[derive(Debug)]
struct ProgressOut {
    /// The last progress line, still on screen without its newline (terminal only).
    open: Option<String>,
    /// The run is over: no more progress lines.
    done: bool,
}

static PROGRESS_OUT: Mutex<ProgressOut> = Mutex::new(ProgressOut {
    open: None,
    done: false,
});

/// Whether stderr is a terminal (checked once).
fn stderr_is_tty() -> bool {
    static TTY: OnceLock<bool> = OnceLock::new();
    *TTY.get_or_init(|| std::io::IsTerminal::is_terminal(&std::io::stderr()))
}

/// Columns of the terminal on stderr (`None` if unknown).
fn stderr_columns() -> Option<usize> {
    // SAFETY: TIOCGWINSZ only writes the winsize struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// `line` cut to fit one terminal row (a wrapped line cannot be redrawn with `\r`).
fn fit_row(line: &str, cols: Option<usize>) -> &str {
    match cols {
        Some(c) if line.chars().count() >= c => {
            let end = line
                .char_indices()
                .nth(c.saturating_sub(1))
                .map_or(line.len(), |(i, _)| i);
            &line[..end]
        }
        _ => line,
    }
}

/// Prints one progress tick: redrawn in place (`\r`, line, clear to end of
/// line) on a terminal, one line per tick otherwise.
fn progress_tick(line: &str) {
    use std::io::Write;
    let mut st = lock(&PROGRESS_OUT);
    if st.done {
        return;
    }
    let mut err = std::io::stderr().lock();
    if stderr_is_tty() {
        let row = fit_row(line, stderr_columns());
        let _ = write!(err, "\r{row}\x1b[K");
        st.open = Some(row.to_string());
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// Prints a message line on stderr without garbling the progress line: on a
/// terminal the message replaces the progress line, which is redrawn below it.
pub fn log_line(msg: impl std::fmt::Display) {
    use std::io::Write;
    let st = lock(&PROGRESS_OUT);
    let mut err = std::io::stderr().lock();
    match &st.open {
        Some(row) => {
            let _ = write!(err, "\r\x1b[K{msg}\n{row}\x1b[K");
        }
        None => {
            let _ = writeln!(err, "{msg}");
        }
    }
    let _ = err.flush();
}

/// Ends progress output when the run is over: a progress line redrawn in
/// place gets its newline, and no further ticks are printed.
pub fn finish_progress() {
    let mut st = lock(&PROGRESS_OUT);
    st.done = true;
    if st.open.take().is_some() {
        eprintln!();
    }
}

/// Spawns a task printing `line(elapsed_s, dt_s)` to stderr every second: on
/// a terminal the line is rewritten in place (call [`finish_progress`] when
/// the run ends), otherwise each tick is a new line.
pub fn spawn_progress(mut line: impl FnMut(f64, f64) -> String + Send + 'static) {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut last = start;
        let mut tick = tokio::time::interval_at(
            start + std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = tick.tick().await;
            let dt = now.duration_since(last).as_secs_f64().max(1e-3);
            last = now;
            progress_tick(&line(now.duration_since(start).as_secs_f64(), dt));
        }
    });
}

/// Rounds to 2 decimals (for seconds in results).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_timestamps_are_clock_monotonic() {
        // What payloads carry must be comparable across processes: CLOCK_MONOTONIC.
        let shared = to_shared(now_ns());
        let mono = monotonic_ns();
        assert!(
            mono >= shared && mono - shared < 1_000_000_000,
            "{shared} vs {mono}"
        );
        assert_eq!(from_shared(to_shared(12_345)), 12_345);
        // Older than this process: clamped to the epoch, never wrapped.
        assert_eq!(from_shared(1), 0);
    }

    #[test]
    fn start_at_converts_the_wall_clock() {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let later = instant_at_unix(wall + 5.0);
        let ahead = later
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        assert!((4.0..=5.1).contains(&ahead), "{ahead}");
        let past = instant_at_unix(wall - 60.0);
        assert!(past.elapsed().as_secs_f64() < 1.0);
    }

    #[test]
    fn progress_rows_fit_the_terminal() {
        assert_eq!(fit_row("abcdef", None), "abcdef");
        assert_eq!(fit_row("abcdef", Some(80)), "abcdef");
        assert_eq!(fit_row("abcdef", Some(4)), "abc");
        assert_eq!(fit_row("abcdef", Some(6)), "abcde");
        assert_eq!(fit_row("aµcdef", Some(3)), "aµ");
    }

    #[test]
    fn window_seq_spans_merge_per_publisher() {
        let mut a = ThreadStats::new();
        let mut b = ThreadStats::new();
        assert_eq!(a.window_seq_span(), 0);
        a.note_window_seq(0, 10);
        a.note_window_seq(0, 12);
        b.note_window_seq(0, 19);
        b.note_window_seq(3, 7);
        a.merge_window_seq(&b.window_seq);
        // Publisher 0: 10..=19 (10 messages, whatever was lost in between); 3: one.
        assert_eq!(a.window_seq, vec![Some((10, 19)), None, None, Some((7, 7))]);
        assert_eq!(a.window_seq_span(), 11);
    }
}
