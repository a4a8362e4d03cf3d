//! The life of one WebSocket connection after the upgrade, sans-IO: which decoded
//! frames reach the application, which control frames are answered, the close
//! handshake in both directions, failing fast on errors, and when the connection
//! is over (RFC 6455 sections 5.5 and 7).
//!
//! The driver feeds it decoded frames ([`Session::on_frame`]) and I/O facts (our
//! close frame is written, the peer's side is gone) and does what it answers:
//! hand a message to the handler, queue the returned bytes, or finish. It holds
//! no buffers (two bytes, `Copy`), so a connection keeps it in a `Cell`.
//!
//! A Server-Sent Events stream has the same life without frames
//! ([`Framing::EventStream`]): closing it means writing what is queued, then
//! ending; nothing is read from the client but its going away.

use bytes::Bytes;

use super::close::CloseCode;
use super::frame::{self, Incoming, OpCode};

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Frames may be queued.
    Open,
    /// Our close frame is queued (last in the queue); nothing more will be.
    Closing,
    /// Finished.
    Done,
}

/// Whether the stream carries WebSocket frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 6455 frames, with a close handshake.
    WebSocket,
    /// A one-way event stream (SSE): no close frame and no close reply.
    EventStream,
}

/// What to do with one decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A data message for the application.
    Deliver {
        /// A binary message (otherwise text, already validated as UTF-8).
        binary: bool,
        /// The message.
        payload: Bytes,
    },
    /// Queue this pong frame (subject to the driver's pending-pong bound).
    Pong(Bytes),
    /// The peer closed first: queue this close frame (our reply, echoing its
    /// code); [`Session::on_close_written`] finishes the connection once it is
    /// written.
    ReplyClose(Bytes),
    /// The peer answered our close and ours is on the wire: finish now.
    Finish(&'static str),
    /// The peer answered our close while ours is still queued: keep writing;
    /// [`Session::on_close_written`] finishes the connection.
    Flush,
    /// Nothing to do (a pong, or data and pings after our close frame, which
    /// RFC 6455 section 5.5.1 lets us ignore).
    Nothing,
}

/// What to do once our close frame (or, for an event stream, the last queued
/// bytes) has been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// Finish now, for this reason.
    Finish(&'static str),
    /// Keep reading: the peer's close reply is expected (within the driver's
    /// close timeout).
    AwaitPeer,
}

/// One connection's state machine; see the module docs. Two bytes: the phase
/// and a set of flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    phase: Phase,
    flags: u8,
}

/// An event stream ([`Framing::EventStream`]): no close frames.
const EVENT_STREAM: u8 = 1;
/// The peer's close frame arrived or its side is gone: nothing more to read.
const PEER_DONE: u8 = 2;
/// Finish as soon as our close is written, without waiting for a reply (errors,
/// slow consumers, event streams).
const FAIL_FAST: u8 = 4;
/// Our close frame has been written.
const CLOSE_WRITTEN: u8 = 8;

impl Session {
    /// A new open connection.
    pub fn new(framing: Framing) -> Self {
        Self {
            phase: Phase::Open,
            flags: match framing {
                Framing::WebSocket => 0,
                Framing::EventStream => EVENT_STREAM,
            },
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8) {
        self.flags |= flag;
    }

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True while the application may queue frames.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// True while there is anything left to read from the peer.
    pub fn reads(&self) -> bool {
        !self.has(PEER_DONE) && self.phase != Phase::Done
    }

    /// What a decoded frame means for the connection.
    pub fn on_frame(&mut self, incoming: Incoming) -> Step {
        let open = self.is_open();
        match incoming {
            Incoming::Text(_) | Incoming::Binary(_) | Incoming::Ping(_) if !open => Step::Nothing,
            Incoming::Text(payload) => Step::Deliver {
                binary: false,
                payload,
            },
            Incoming::Binary(payload) => Step::Deliver {
                binary: true,
                payload,
            },
            Incoming::Ping(p) => Step::Pong(frame::encode(OpCode::Pong, false, &p)),
            Incoming::Pong(_) => Step::Nothing,
            Incoming::Close(c) => {
                self.set(PEER_DONE);
                if open {
                    // Echo the peer's code (RFC 6455 section 5.5.1); a close
                    // without a code gets an empty close back.
                    self.phase = Phase::Closing;
                    Step::ReplyClose(match c {
                        Some((code, _)) => frame::encode_close(code, ""),
                        None => frame::encode(OpCode::Close, false, &[]),
                    })
                } else if self.has(CLOSE_WRITTEN) {
                    Step::Finish("close handshake")
                } else {
                    Step::Flush
                }
            }
        }
    }

    /// Begin a graceful close with `code` and `reason`: the close frame to queue
    /// (empty for an event stream, which just ends once its queue is written), or
    /// `None` if a close is already under way.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Option<Bytes> {
        if !self.is_open() {
            return None;
        }
        self.phase = Phase::Closing;
        if self.has(EVENT_STREAM) {
            self.set(FAIL_FAST);
            return Some(Bytes::new());
        }
        Some(frame::encode_close(code, reason))
    }

    /// Close without waiting for the peer's reply: once our close frame is
    /// written the connection is over (a slow consumer). Reading goes on until
    /// then unless [`Session::stop_reading`] is called too.
    pub fn abandon(&mut self, code: CloseCode, reason: &str) -> Option<Bytes> {
        self.set(FAIL_FAST);
        self.close(code, reason)
    }

    /// Fail the connection (a protocol error, a handler failure): stop reading,
    /// send `code` if no close is under way, and finish once it is written.
    pub fn fail(&mut self, code: CloseCode, reason: &str) -> Option<Bytes> {
        self.set(PEER_DONE);
        self.abandon(code, reason)
    }

    /// Stop reading: nothing more the peer sends matters.
    pub fn stop_reading(&mut self) {
        self.set(PEER_DONE);
    }

    /// Our close frame (for an event stream, everything queued) is written.
    pub fn on_close_written(&mut self) -> AfterClose {
        self.set(CLOSE_WRITTEN);
        if self.has(FAIL_FAST) {
            AfterClose::Finish("closed by server")
        } else if self.has(PEER_DONE) {
            AfterClose::Finish("close handshake")
        } else {
            AfterClose::AwaitPeer
        }
    }

    /// The peer's side is gone (EOF, reset, a failed write): nobody is left to
    /// read a close frame, so the connection is over.
    pub fn on_peer_gone(&mut self) {
        self.set(PEER_DONE);
    }

    /// The connection is over; true the first time (its resources are released
    /// once).
    pub fn finish(&mut self) -> bool {
        let first = self.phase != Phase::Done;
        self.phase = Phase::Done;
        self.set(PEER_DONE);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Incoming {
        Incoming::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn data_and_pings_while_open() {
        let mut s = Session::new(Framing::WebSocket);
        assert_eq!(
            s.on_frame(text("hi")),
            Step::Deliver {
                binary: false,
                payload: Bytes::from_static(b"hi")
            }
        );
        assert_eq!(
            s.on_frame(Incoming::Binary(Bytes::from_static(&[1, 2]))),
            Step::Deliver {
                binary: true,
                payload: Bytes::from_static(&[1, 2])
            }
        );
        assert_eq!(
            s.on_frame(Incoming::Ping(Bytes::from_static(b"p"))),
            Step::Pong(Bytes::from_static(&[0x8A, 0x01, b'p']))
        );
        assert_eq!(s.on_frame(Incoming::Pong(Bytes::new())), Step::Nothing);
        assert!(s.is_open() && s.reads());
    }

    #[test]
    fn the_peer_closes_first_and_gets_its_code_echoed() {
        let mut s = Session::new(Framing::WebSocket);
        let step = s.on_frame(Incoming::Close(Some((4000, Bytes::from_static(b"bye")))));
        assert_eq!(step, Step::ReplyClose(frame::encode_close(4000, "")));
        assert_eq!(s.phase(), Phase::Closing);
        assert!(!s.reads(), "nothing is read after the peer's close");
        assert_eq!(s.close(1000, "late"), None, "one close frame only");
        assert_eq!(s.on_close_written(), AfterClose::Finish("close handshake"));
    }

    #[test]
    fn a_close_without_a_code_gets_an_empty_close() {
        let mut s = Session::new(Framing::WebSocket);
        assert_eq!(
            s.on_frame(Incoming::Close(None)),
            Step::ReplyClose(Bytes::from_static(&[0x88, 0x00]))
        );
    }

    #[test]
    fn we_close_first_and_wait_for_the_reply() {
        let mut s = Session::new(Framing::WebSocket);
        assert_eq!(
            s.close(1001, "going away"),
            Some(frame::encode_close(1001, "going away"))
        );
        // Data and pings after our close are ignored; the peer may still talk.
        assert_eq!(s.on_frame(text("late")), Step::Nothing);
        assert_eq!(s.on_frame(Incoming::Ping(Bytes::new())), Step::Nothing);
        assert_eq!(s.on_close_written(), AfterClose::AwaitPeer);
        assert!(s.reads());
        assert_eq!(
            s.on_frame(Incoming::Close(Some((1001, Bytes::new())))),
            Step::Finish("close handshake")
        );
    }

    #[test]
    fn a_reply_before_our_close_is_written_finishes_after_the_write() {
        let mut s = Session::new(Framing::WebSocket);
        assert!(s.close(1000, "").is_some());
        assert_eq!(s.on_frame(Incoming::Close(None)), Step::Flush);
        assert_eq!(s.on_close_written(), AfterClose::Finish("close handshake"));
    }

    #[test]
    fn failing_stops_reading_and_does_not_wait() {
        let mut s = Session::new(Framing::WebSocket);
        assert_eq!(
            s.fail(1002, "bad frame"),
            Some(frame::encode_close(1002, "bad frame"))
        );
        assert!(!s.reads());
        assert_eq!(s.fail(1011, "again"), None, "a close is already under way");
        assert_eq!(s.on_close_written(), AfterClose::Finish("closed by server"));
    }

    #[test]
    fn failing_during_a_graceful_close_still_fails_fast() {
        let mut s = Session::new(Framing::WebSocket);
        assert!(s.close(1000, "").is_some());
        assert_eq!(s.fail(1002, "bad frame"), None);
        assert_eq!(s.on_close_written(), AfterClose::Finish("closed by server"));
    }

    #[test]
    fn abandoning_keeps_reading_until_the_close_is_written() {
        let mut s = Session::new(Framing::WebSocket);
        assert!(s.abandon(1008, "slow consumer").is_some());
        assert!(s.reads());
        assert_eq!(s.on_frame(text("x")), Step::Nothing);
        s.stop_reading();
        assert!(!s.reads());
        assert_eq!(s.on_close_written(), AfterClose::Finish("closed by server"));
    }

    #[test]
    fn an_event_stream_ends_once_its_queue_is_written() {
        let mut s = Session::new(Framing::EventStream);
        assert_eq!(s.close(1000, "ignored"), Some(Bytes::new()));
        assert_eq!(s.on_close_written(), AfterClose::Finish("closed by server"));
    }

    #[test]
    fn finishing_happens_once() {
        let mut s = Session::new(Framing::WebSocket);
        s.on_peer_gone();
        assert!(!s.reads());
        assert!(s.finish());
        assert!(!s.finish());
        assert_eq!(s.phase(), Phase::Done);
        assert_eq!(s.close(1000, ""), None);
        assert_eq!(s.on_frame(text("x")), Step::Nothing);
    }

    #[test]
    fn the_state_is_a_few_bytes() {
        // Kept in every idle connection.
        assert!(std::mem::size_of::<Session>() <= 2);
    }
}
