//! The per-connection outbound queue: shared, already-encoded frames bounded in bytes.
//!
//! A broadcast pushes the same refcounted [`Bytes`] into many queues (a refcount and a
//! push per member). The writer gathers the front of the queue into one send and then
//! [`OutboundQueue::consume`]s what the kernel took, slicing a partly written frame.

use std::collections::VecDeque;

use bytes::Bytes;

/// Returned when a push would take the queue over its byte cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("outbound queue is full")
    }
}

impl std::error::Error for QueueFull {}

/// Frames waiting to be written to one connection.
#[derive(Debug, Default)]
pub struct OutboundQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    cap: usize,
    /// The front frame has been partly written: it must be finished before anything
    /// else goes on the wire, or the peer sees a torn frame.
    front_started: bool,
}

impl OutboundQueue {
    /// An empty queue that holds at most `cap` bytes. Allocates nothing until used.
    pub fn new(cap: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            cap,
            front_started: false,
        }
    }

    /// Append a frame; refuses it if the queue would exceed its cap.
    pub fn push(&mut self, frame: Bytes) -> Result<(), QueueFull> {
        if self.bytes + frame.len() > self.cap {
            return Err(QueueFull);
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Append a frame past the cap. Only for the final close frame, which must be
    /// sent even to a slow consumer; the caller stops pushing afterwards.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Drop everything queued, including a partly written frame (the connection is
    /// being torn down and nothing more will be written).
    pub fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.bytes = 0;
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
            self.bytes = front.len();
            self.frames.push_back(front);
            self.front_started = true;
        }
    }

    /// Bytes queued.
    pub fn len_bytes(&self) -> usize {
        self.bytes
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
        self.frames.iter()
    }

    /// The first frame, if any.
    pub fn front(&self) -> Option<&Bytes> {
        self.frames.front()
    }

    /// Remove `n` written bytes from the front; returns how many whole frames were
    /// completed. A partly written frame stays queued as the unwritten slice.
    pub fn consume(&mut self, mut n: usize) -> usize {
        let mut done = 0;
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.bytes -= front.len();
                self.frames.pop_front();
                self.front_started = false;
                done += 1;
            } else {
                let _ = front.split_to(n);
                self.bytes -= n;
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

    #[test]
    fn refuses_frames_past_the_byte_cap() {
        let mut q = OutboundQueue::new(10);
        assert!(q.push(Bytes::from_static(b"123456")).is_ok());
        assert_eq!(q.push(Bytes::from_static(b"12345")), Err(QueueFull));
        assert_eq!(q.len_bytes(), 6);
        q.push_unbounded(Bytes::from_static(b"close"));
        assert_eq!(q.len_bytes(), 11);
    }

    #[test]
    fn consume_slices_a_partly_written_frame() {
        let mut q = OutboundQueue::new(100);
        q.push(Bytes::from_static(b"abc")).unwrap();
        q.push(Bytes::from_static(b"defg")).unwrap();
        assert_eq!(q.consume(5), 1);
        assert_eq!(q.front().unwrap().as_ref(), b"fg");
        assert_eq!(q.len_bytes(), 2);
        assert_eq!(q.consume(2), 1);
        assert!(q.is_empty());
        assert_eq!(q.len_bytes(), 0);
    }

    #[test]
    fn drop_unsent_keeps_the_rest_of_a_started_frame() {
        let mut q = OutboundQueue::new(100);
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
}
