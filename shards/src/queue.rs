//! The per-connection outbound queue: shared, already-encoded frames bounded in bytes,
//! with the room's slow-consumer policy applied when a room message arrives.
//!
//! A broadcast pushes the same refcounted [`Bytes`] into many queues (a refcount and a
//! push per member). The writer gathers the front of the queue into one send and then
//! [`OutboundQueue::consume`]s what the kernel took, slicing a partly written frame.
//!
//! Every queued frame carries a [`FrameClass`]: pinned frames (control frames,
//! replies, messages of rooms whose policy is [`Overflow::Disconnect`]) are never
//! dropped; room messages of [`Overflow::DropOldest`] and [`Overflow::KeepLatest`]
//! rooms may be. A frame whose first byte has been written is never dropped or
//! replaced, so the wire always carries whole frames.

use std::collections::VecDeque;

use bytes::Bytes;

/// What each queued frame is charged against the cap on top of its length: its
/// queue entry (40 bytes) and, for a frame of its own, the allocation's header.
/// Without it a client that sends empty messages to an echo endpoint and never
/// reads could queue millions of 2-byte frames, ~70 bytes of memory each, under a
/// cap that counted 2.
pub const ENTRY_COST: usize = 64;

/// Returned when a push would take the queue over its byte cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("outbound queue is full")
    }
}

impl std::error::Error for QueueFull {}

/// What happens to a room message for a member whose queue cannot take it (the
/// room's slow-consumer policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse it: the caller closes the connection as a slow consumer.
    #[default]
    Disconnect,
    /// Drop the oldest droppable frames not yet started until it fits.
    DropOldest,
    /// Conflate: it replaces the member's pending (unstarted) message of the same
    /// room, so at most one per room waits; then as [`Overflow::DropOldest`].
    KeepLatest,
}

/// How a queued frame may be treated: pinned, or a droppable room message with a
/// room key (for conflation). Two words of flags in one `u64`, resolved once per
/// room per delivery, not per member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameClass(u64);

const DROPPABLE: u64 = 1;
const LATEST: u64 = 2;

impl FrameClass {
    /// Never dropped or replaced (control frames, replies, disconnect-policy rooms).
    pub const PINNED: FrameClass = FrameClass(0);

    /// A message of a room with `policy`; `room_key` identifies the room (a hash of
    /// its name: two rooms conflate only if their 62-bit keys collide).
    pub fn room(policy: Overflow, room_key: u64) -> Self {
        match policy {
            Overflow::Disconnect => Self::PINNED,
            Overflow::DropOldest => FrameClass((room_key << 2) | DROPPABLE),
            Overflow::KeepLatest => FrameClass((room_key << 2) | DROPPABLE | LATEST),
        }
    }

    /// The policy this class was made for.
    pub fn policy(self) -> Overflow {
        if self.0 & LATEST != 0 {
            Overflow::KeepLatest
        } else if self.0 & DROPPABLE != 0 {
            Overflow::DropOldest
        } else {
            Overflow::Disconnect
        }
    }

    fn droppable(self) -> bool {
        self.0 & DROPPABLE != 0
    }

    fn latest(self) -> bool {
        self.0 & LATEST != 0
    }
}

/// What a policy push did besides queueing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushed {
    /// The new frame is queued (false: it was itself dropped, as it could not fit
    /// even with every droppable frame gone).
    pub queued: bool,
    /// Older frames dropped to make room (plus the new one if not queued).
    pub dropped: u32,
    /// Older messages of the same room replaced (keep_latest: 0 or 1).
    pub conflated: u32,
    /// Bytes removed from the queue by dropping and conflating.
    pub removed_bytes: usize,
}

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    class: FrameClass,
}

/// Frames waiting to be written to one connection.
#[derive(Debug, Default)]
pub struct OutboundQueue {
    frames: VecDeque<Entry>,
    bytes: usize,
    /// At most `u32::MAX` (4 GiB per connection is no cap at all): the small
    /// fields share words, keeping the connection struct small.
    cap: u32,
    /// What droppable entries are charged: their bytes plus [`ENTRY_COST`] each (a
    /// started front frame included). Droppable frames are only admitted under the
    /// cap, so this fits a `u32`.
    droppable_bytes: u32,
    /// Keep-latest entries queued: conflation scans only when there are some.
    latest: u32,
    /// The front frame has been partly written: it must be finished before anything
    /// else goes on the wire, or the peer sees a torn frame.
    front_started: bool,
}

impl OutboundQueue {
    /// An empty queue that holds at most `cap` bytes, each frame charged its length
    /// plus [`ENTRY_COST`]. Allocates nothing until used.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: u32::try_from(cap).unwrap_or(u32::MAX),
            ..Self::default()
        }
    }

    /// Append a pinned frame; refuses it if the queue would exceed its cap.
    pub fn push(&mut self, frame: Bytes) -> Result<(), QueueFull> {
        if self.charged() + frame.len() + ENTRY_COST > self.cap() {
            return Err(QueueFull);
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Append a pinned frame past the cap. Only for the final close frame, which
    /// must be sent even to a slow consumer; the caller stops pushing afterwards.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.push_entry(frame, FrameClass::PINNED);
    }

    fn push_entry(&mut self, frame: Bytes, class: FrameClass) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        if class.droppable() {
            self.droppable_bytes += (frame.len() + ENTRY_COST) as u32;
        }
        if class.latest() {
            self.latest += 1;
        }
        self.frames.push_back(Entry {
            bytes: frame,
            class,
        });
    }

    /// Queue a room message under its room's policy ([`FrameClass::room`]).
    /// [`Overflow::Disconnect`] behaves as [`OutboundQueue::push`]; the other two
    /// never fail: they conflate and drop droppable frames that have not started
    /// (oldest first), and as a last resort drop the new frame, reporting it.
    pub fn push_room(&mut self, frame: Bytes, class: FrameClass) -> Result<Pushed, QueueFull> {
        let mut out = Pushed::default();
        if !class.droppable() {
            self.push(frame)?;
            out.queued = true;
            return Ok(out);
        }
        if class.latest() && self.latest > 0 {
            let start = usize::from(self.front_started);
            let found = self
                .frames
                .iter()
                .skip(start)
                .position(|e| e.class == class)
                .map(|i| i + start);
            if let Some(i) = found {
                if let Some(old) = self.frames.remove(i) {
                    out.conflated = 1;
                    out.removed_bytes += old.bytes.len();
                    self.forget(&old);
                }
            }
        }
        let len = frame.len() + ENTRY_COST;
        let cap = self.cap();
        let charged = self.charged();
        if charged + len > cap {
            // What dropping every droppable frame could free (not a started front
            // frame), entry costs included.
            let started = match self.frames.front() {
                Some(e) if self.front_started && e.class.droppable() => e.bytes.len() + ENTRY_COST,
                _ => 0,
            };
            let available = self.droppable_bytes as usize - started;
            if charged - available + len > cap {
                // Even dropping everything droppable would not make room.
                out.dropped += 1;
                return Ok(out);
            }
            let need = charged + len - cap;
            out.removed_bytes += self.drop_oldest(need, &mut out.dropped);
        }
        self.push_entry(frame, class);
        out.queued = true;
        Ok(out)
    }

    /// Remove droppable, unstarted frames from the front until `need` charged bytes
    /// (length plus [`ENTRY_COST`] each) are freed; returns the frame bytes freed.
    fn drop_oldest(&mut self, need: usize, dropped: &mut u32) -> usize {
        let (mut freed, mut charged) = (0, 0);
        let mut i = usize::from(self.front_started);
        while charged < need && i < self.frames.len() {
            if self.frames[i].class.droppable() {
                if let Some(old) = self.frames.remove(i) {
                    freed += old.bytes.len();
                    charged += old.bytes.len() + ENTRY_COST;
                    *dropped += 1;
                    self.forget(&old);
                }
            } else {
                i += 1;
            }
        }
        freed
    }

    /// Account for an entry taken out of the queue.
    fn forget(&mut self, e: &Entry) {
        self.bytes -= e.bytes.len();
        if e.class.droppable() {
            self.droppable_bytes -= (e.bytes.len() + ENTRY_COST) as u32;
        }
        if e.class.latest() {
            self.latest -= 1;
        }
    }

    /// Drop everything queued, including a partly written frame (the connection is
    /// being torn down and nothing more will be written).
    pub fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
        self.droppable_bytes = 0;
        self.latest = 0;
        self.front_started = false;
    }

    /// Drop every frame not yet started, keeping the rest of a partly written front
    /// frame so the stream stays well-formed (e.g. before closing a slow consumer).
    pub fn drop_unsent(&mut self) {
        let keep = if self.front_started {
            self.frames.pop_front()
        } else {
            None
        };
        self.clear();
        if let Some(front) = keep {
            self.push_entry(front.bytes, front.class);
            self.front_started = true;
        }
    }

    /// The byte cap.
    pub fn cap(&self) -> usize {
        self.cap as usize
    }

    /// Bytes queued.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// What the queue holds against its cap: bytes queued plus [`ENTRY_COST`] per
    /// frame.
    pub fn charged(&self) -> usize {
        self.bytes + self.frames.len() * ENTRY_COST
    }

    /// Frames queued.
    pub fn len_frames(&self) -> usize {
        self.frames.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames in order, for gathering into one write.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter().map(|e| &e.bytes)
    }

    /// The first frame, if any.
    pub fn front(&self) -> Option<&Bytes> {
        self.frames.front().map(|e| &e.bytes)
    }

    /// Remove `n` written bytes from the front; returns how many whole frames were
    /// completed. A partly written frame stays queued as the unwritten slice.
    pub fn consume(&mut self, mut n: usize) -> usize {
        let mut done = 0;
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            if n >= front.bytes.len() {
                n -= front.bytes.len();
                if let Some(e) = self.frames.pop_front() {
                    self.forget(&e);
                }
                self.front_started = false;
                done += 1;
            } else {
                let _ = front.bytes.split_to(n);
                self.bytes -= n;
                if front.class.droppable() {
                    self.droppable_bytes -= n as u32;
                }
                self.front_started = true;
                n = 0;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 64 {
            // A burst is over: release its ring buffer so idle connections stay small.
            self.frames = VecDeque::new();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one queued frame costs against the cap besides its bytes.
    const E: usize = ENTRY_COST;

    #[test]
    fn refuses_frames_past_the_byte_cap() {
        let mut q = OutboundQueue::new(10 + E);
        assert!(q.push(Bytes::from_static(b"123456")).is_ok());
        assert_eq!(q.push(Bytes::from_static(b"12345")), Err(QueueFull));
        assert_eq!(q.len_bytes(), 6);
        q.push_unbounded(Bytes::from_static(b"close"));
        assert_eq!(q.len_bytes(), 11);
    }

    /// Tiny frames are charged their queue entry too: a cap of N bytes holds far
    /// fewer than N/2 two-byte frames (what an echo client that never reads sends).
    #[test]
    fn each_frame_is_charged_its_entry() {
        let mut q = OutboundQueue::new(4 * (2 + E));
        for _ in 0..4 {
            q.push(Bytes::from_static(b"\x81\x00")).unwrap();
        }
        assert_eq!(q.push(Bytes::from_static(b"\x81\x00")), Err(QueueFull));
        assert_eq!((q.len_bytes(), q.charged()), (8, 4 * (2 + E)));
        q.consume(2);
        assert_eq!(q.charged(), 3 * (2 + E));
        let c = FrameClass::room(Overflow::DropOldest, 1);
        let mut q = OutboundQueue::new(4 * (2 + E));
        for i in 0..10u8 {
            assert!(q.push_room(frame(i, 2), c).unwrap().queued);
        }
        assert_eq!(
            q.len_frames(),
            4,
            "the oldest were dropped, entries counted"
        );
    }

    #[test]
    fn consume_slices_a_partly_written_frame() {
        let mut q = OutboundQueue::new(100 + 2 * E);
        q.push(Bytes::from_static(b"abc")).unwrap();
        q.push(Bytes::from_static(b"defg")).unwrap();
        assert_eq!(q.consume(5), 1);
        assert_eq!(q.front().unwrap().as_ref(), b"fg");
        assert_eq!((q.len_bytes(), q.charged()), (2, 2 + E));
        assert_eq!(q.consume(2), 1);
        assert!(q.is_empty());
        assert_eq!(q.len_bytes(), 0);
    }

    #[test]
    fn drop_unsent_keeps_the_rest_of_a_started_frame() {
        let mut q = OutboundQueue::new(100 + 2 * E);
        q.push(Bytes::from_static(b"abcd")).unwrap();
        q.push(Bytes::from_static(b"efgh")).unwrap();
        q.drop_unsent();
        assert!(q.is_empty(), "nothing started: everything goes");
        q.push(Bytes::from_static(b"abcd")).unwrap();
        q.push(Bytes::from_static(b"efgh")).unwrap();
        q.consume(1);
        q.drop_unsent();
        assert_eq!(q.len_frames(), 1);
        assert_eq!(q.front().unwrap().as_ref(), b"bcd");
        assert_eq!(q.len_bytes(), 3);
    }

    fn frame(tag: u8, len: usize) -> Bytes {
        Bytes::from(vec![tag; len])
    }

    fn tags(q: &OutboundQueue) -> Vec<u8> {
        q.frames().map(|f| f[0]).collect()
    }

    #[test]
    fn disconnect_policy_refuses_like_push() {
        let mut q = OutboundQueue::new(10 + E);
        let c = FrameClass::room(Overflow::Disconnect, 7);
        assert_eq!(c, FrameClass::PINNED);
        assert!(q.push_room(frame(1, 6), c).unwrap().queued);
        assert_eq!(q.push_room(frame(2, 5), c), Err(QueueFull));
        assert_eq!(q.len_bytes(), 6);
    }

    #[test]
    fn drop_oldest_drops_whole_unstarted_frames_until_the_new_one_fits() {
        let mut q = OutboundQueue::new(10 + 3 * E);
        let c = FrameClass::room(Overflow::DropOldest, 1);
        for t in 1..=3 {
            assert!(q.push_room(frame(t, 3), c).unwrap().queued);
        }
        // 9 bytes queued; 4 more need one frame gone (the oldest).
        let p = q.push_room(frame(4, 4), c).unwrap();
        assert_eq!((p.queued, p.dropped, p.removed_bytes), (true, 1, 3));
        assert_eq!(tags(&q), [2, 3, 4]);
        assert_eq!(q.len_bytes(), 10);
        // 8 more, and one more entry, need two gone.
        let p = q.push_room(frame(5, 8), c).unwrap();
        assert_eq!((p.queued, p.dropped, p.removed_bytes), (true, 2, 6));
        assert_eq!(tags(&q), [4, 5]);
        assert_eq!(q.charged(), 12 + 2 * E);
    }

    #[test]
    fn drop_oldest_never_drops_a_started_frame_or_a_pinned_one() {
        let mut q = OutboundQueue::new(12 + 3 * E);
        let c = FrameClass::room(Overflow::DropOldest, 1);
        q.push_room(frame(1, 4), c).unwrap();
        q.push(frame(2, 2)).unwrap(); // a reply: pinned
        q.push_room(frame(3, 4), c).unwrap();
        q.consume(1); // frame 1 is on the wire
        assert_eq!(q.len_bytes(), 9);
        let p = q.push_room(frame(4, 4), c).unwrap();
        assert_eq!((p.queued, p.dropped), (true, 1));
        assert_eq!(tags(&q), [1, 2, 4], "the rest of frame 1 stays whole");
        assert_eq!(q.front().unwrap().len(), 3);
        // Nothing droppable is left but frame 4: a frame that cannot fit even with
        // it gone is itself dropped, and the queue is untouched.
        let p = q.push_room(frame(5, 9), c).unwrap();
        assert_eq!((p.queued, p.dropped), (false, 1));
        assert_eq!(tags(&q), [1, 2, 4]);
        // Larger than the cap: dropped, never queued.
        let p = q.push_room(frame(6, 13 + 3 * E), c).unwrap();
        assert!(!p.queued);
        // Consuming the rest keeps the accounting exact.
        assert_eq!(q.consume(3 + 2 + 4), 3);
        assert!(q.is_empty());
        assert_eq!((q.len_bytes(), q.droppable_bytes, q.latest), (0, 0, 0));
        assert_eq!(q.charged(), 0);
    }

    #[test]
    fn drop_oldest_leaves_disconnect_rooms_frames_alone() {
        let mut q = OutboundQueue::new(8 + 2 * E);
        let a = FrameClass::room(Overflow::Disconnect, 1);
        let b = FrameClass::room(Overflow::DropOldest, 2);
        q.push_room(frame(1, 4), a).unwrap();
        q.push_room(frame(2, 4), b).unwrap();
        let p = q.push_room(frame(3, 4), b).unwrap();
        assert_eq!((p.queued, p.dropped), (true, 1));
        assert_eq!(tags(&q), [1, 3]);
    }

    #[test]
    fn keep_latest_holds_one_pending_message_per_room() {
        let mut q = OutboundQueue::new(100 + 4 * E);
        let x = FrameClass::room(Overflow::KeepLatest, 10);
        let y = FrameClass::room(Overflow::KeepLatest, 11);
        q.push_room(frame(1, 3), x).unwrap();
        q.push_room(frame(2, 3), y).unwrap();
        q.push(frame(9, 1)).unwrap();
        let p = q.push_room(frame(3, 3), x).unwrap();
        assert_eq!((p.queued, p.conflated, p.dropped), (true, 1, 0));
        // The newer message goes to the back: event ids stay in order.
        assert_eq!(tags(&q), [2, 9, 3]);
        let p = q.push_room(frame(4, 3), y).unwrap();
        assert_eq!(p.conflated, 1);
        assert_eq!(tags(&q), [9, 3, 4]);
        assert_eq!(q.len_bytes(), 7);
        assert_eq!(q.latest, 2);
    }

    #[test]
    fn keep_latest_never_replaces_a_started_frame() {
        let mut q = OutboundQueue::new(100 + 3 * E);
        let x = FrameClass::room(Overflow::KeepLatest, 10);
        q.push_room(frame(1, 4), x).unwrap();
        q.consume(2);
        let p = q.push_room(frame(2, 4), x).unwrap();
        assert_eq!(p.conflated, 0);
        assert_eq!(tags(&q), [1, 2]);
        let p = q.push_room(frame(3, 4), x).unwrap();
        assert_eq!(p.conflated, 1);
        assert_eq!(tags(&q), [1, 3]);
        assert_eq!(q.len_bytes(), 6);
    }

    #[test]
    fn keep_latest_drops_oldest_when_other_rooms_fill_the_queue() {
        let mut q = OutboundQueue::new(9 + 3 * E);
        let d = FrameClass::room(Overflow::DropOldest, 1);
        let x = FrameClass::room(Overflow::KeepLatest, 2);
        q.push_room(frame(1, 3), d).unwrap();
        q.push_room(frame(2, 3), d).unwrap();
        q.push_room(frame(3, 3), x).unwrap();
        let p = q.push_room(frame(4, 3), d).unwrap();
        assert_eq!((p.dropped, p.conflated), (1, 0));
        assert_eq!(tags(&q), [2, 3, 4]);
        let p = q.push_room(frame(5, 3), x).unwrap();
        assert_eq!((p.dropped, p.conflated), (0, 1));
        assert_eq!(tags(&q), [2, 4, 5]);
    }

    #[test]
    fn drop_unsent_keeps_class_accounting() {
        let mut q = OutboundQueue::new(100 + 2 * E);
        let x = FrameClass::room(Overflow::KeepLatest, 2);
        q.push_room(frame(1, 4), x).unwrap();
        q.push_room(frame(2, 4), FrameClass::room(Overflow::KeepLatest, 3))
            .unwrap();
        q.consume(1);
        q.drop_unsent();
        assert_eq!(
            (q.len_bytes(), q.droppable_bytes, q.latest),
            (3, 3 + E as u32, 1)
        );
        assert_eq!(q.consume(3), 1);
        assert_eq!((q.len_bytes(), q.droppable_bytes, q.latest), (0, 0, 0));
    }
}
