//! The per-shard connection driver.
//!
//! Connections have no task of their own. Their sockets are polled with wakers that
//! carry `(slot, generation, read|write)` packed into the waker's data word — no
//! allocation, nothing dereferenced — and waking one appends that triple to the
//! shard's ready list and wakes the single driver task. The driver then reads
//! (decode, dispatch) or writes (gather the queue into one send) each ready
//! connection. Room fan-out only queues frames and marks members write-ready, so a
//! whole batch of deliveries is flushed with one send per member.
//!
//! The wakers are only ever woken on their shard's thread (glommio sources complete
//! on the executor that registered them); a wake on another thread would land in that
//! thread's own, never-drained list and be ignored, which is harmless.

use std::cell::RefCell;
use std::future::poll_fn;
use std::task::{Poll, RawWaker, RawWakerVTable, Waker};

/// Ready-list bit: the socket may be readable.
pub(crate) const READ: u8 = 1;
/// Ready-list bit: the socket may be writable / frames are queued.
pub(crate) const WRITE: u8 = 2;
/// Not a ready-list kind but a `Conn::scheduled` flag: the last write was left
/// pending (the socket is full); only its waker schedules the next one, so queueing
/// to a member that does not read costs no gather and no send per message.
pub(crate) const WRITE_BLOCKED: u8 = 4;
/// Not a ready-list kind but a `Conn::scheduled` flag: a room delivery's write is
/// held by the flush policy (`runtime.flush_delay`); the flusher schedules it.
pub(crate) const HELD: u8 = 8;

const _: () = assert!(
    usize::BITS == 64,
    "the driver packs (slot, generation) into a 64-bit waker word"
);

/// One ready-list entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
    pub(crate) kind: u8,
}

#[derive(Default)]
struct ReadyList {
    entries: Vec<Ready>,
    driver: Option<Waker>,
}

thread_local! {
    static READY: RefCell<ReadyList> = RefCell::new(ReadyList::default());
}

/// Put a connection on this thread's ready list and wake the driver.
pub(crate) fn push_ready(slot: u32, generation: u32, kind: u8) {
    READY.with(|r| {
        let mut r = r.borrow_mut();
        r.entries.push(Ready {
            slot,
            generation,
            kind,
        });
        if let Some(w) = r.driver.take() {
            w.wake();
        }
    });
}

/// Wait until the ready list is non-empty, then move it into `out`.
pub(crate) async fn next_batch(out: &mut Vec<Ready>) {
    poll_fn(|cx| {
        READY.with(|r| {
            let mut r = r.borrow_mut();
            if r.entries.is_empty() {
                r.driver = Some(cx.waker().clone());
                Poll::Pending
            } else {
                std::mem::swap(&mut r.entries, out);
                Poll::Ready(())
            }
        })
    })
    .await
}

/// A waker that puts `(slot, generation, kind)` on the ready list when woken.
pub(crate) fn waker(slot: u32, generation: u32, kind: u8) -> Waker {
    debug_assert!(slot < (1 << 29) && kind <= 3);
    let word = ((generation as usize) << 32) | ((slot as usize) << 2) | kind as usize;
    // SAFETY: the vtable functions treat the data pointer as a plain integer and never
    // dereference it, so any value is valid and there is nothing to free or share.
    unsafe { Waker::from_raw(RawWaker::new(word as *const (), &VTABLE)) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_raw, drop_raw);

unsafe fn clone_raw(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

unsafe fn wake_raw(data: *const ()) {
    let word = data as usize;
    push_ready(
        ((word >> 2) & 0x3FFF_FFFF) as u32,
        (word >> 32) as u32,
        (word & 3) as u8,
    );
}

unsafe fn drop_raw(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waker_round_trips_its_word_through_the_ready_list() {
        let original = waker(123_456, 0xDEAD_BEEF, WRITE);
        let copy = original.clone();
        drop(original);
        copy.wake_by_ref();
        copy.wake();
        let got = READY.with(|r| std::mem::take(&mut r.borrow_mut().entries));
        assert_eq!(got.len(), 2);
        for e in got {
            assert_eq!(
                (e.slot, e.generation, e.kind),
                (123_456, 0xDEAD_BEEF, WRITE)
            );
        }
    }
}
