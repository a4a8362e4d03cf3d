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
}

impl OutboundQueue {
    /// An empty queue that holds at most `cap` bytes. Allocates nothing until used.
    pub fn new(cap: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            cap,
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

    /// Drop everything queued (e.g. before closing a slow consumer).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        // Give the memory back: a closed slow consumer should not keep its peak.
        self.frames.shrink_to_fit();
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
                done += 1;
            } else {
                let _ = front.split_to(n);
                self.bytes -= n;
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
}
