//! Requests a shard is waiting on from other shards: publish acknowledgements
//! (the position the owner gave a message) and room-info gathers. Each waiter holds
//! a slot; the shard's inbox fills it when the answer arrives.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use corecast_shards::Position;

/// Members of a room by transport, and the room's position (from its owner).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomCounts {
    pub(crate) websocket: u64,
    pub(crate) sse: u64,
    pub(crate) webtransport: u64,
    pub(crate) position: Option<Position>,
}

/// A single-value slot a task can wait on.
pub(crate) struct Slot<T> {
    value: RefCell<Option<T>>,
    waker: Cell<Option<Waker>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            value: RefCell::new(None),
            waker: Cell::new(None),
        }
    }
}

impl<T> Slot<T> {
    fn fill(&self, v: T) {
        *self.value.borrow_mut() = Some(v);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Wait until the slot is filled.
    pub(crate) async fn wait(&self) -> T {
        poll_fn(|cx| match self.value.borrow_mut().take() {
            Some(v) => Poll::Ready(v),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

struct InfoGather {
    remaining: Cell<usize>,
    sum: Cell<RoomCounts>,
    done: Rc<Slot<RoomCounts>>,
}

/// A shard's outstanding requests, by token.
#[derive(Default)]
pub(crate) struct Pending {
    next: Cell<u64>,
    acks: RefCell<HashMap<u64, Rc<Slot<Position>>>>,
    infos: RefCell<HashMap<u64, InfoGather>>,
}

impl Pending {
    fn token(&self) -> u64 {
        let t = self.next.get().wrapping_add(1);
        self.next.set(t);
        t
    }

    /// Register a publish acknowledgement to wait for.
    pub(crate) fn new_ack(&self) -> (u64, Rc<Slot<Position>>) {
        let token = self.token();
        let slot = Rc::new(Slot::default());
        self.acks.borrow_mut().insert(token, slot.clone());
        (token, slot)
    }

    /// Register a gather of `shards` room-info replies.
    pub(crate) fn new_info(&self, shards: usize) -> (u64, Rc<Slot<RoomCounts>>) {
        let token = self.token();
        let done = Rc::new(Slot::default());
        self.infos.borrow_mut().insert(
            token,
            InfoGather {
                remaining: Cell::new(shards),
                sum: Cell::new(RoomCounts::default()),
                done: done.clone(),
            },
        );
        (token, done)
    }

    /// An acknowledgement arrived (late ones, whose waiter gave up, are dropped).
    pub(crate) fn ack(&self, token: u64, pos: Position) {
        if let Some(slot) = self.acks.borrow_mut().remove(&token) {
            slot.fill(pos);
        }
    }

    /// One shard's room-info reply arrived.
    pub(crate) fn info_reply(&self, token: u64, counts: RoomCounts) {
        let finished = {
            let infos = self.infos.borrow();
            let Some(g) = infos.get(&token) else {
                return;
            };
            let mut sum = g.sum.get();
            sum.websocket += counts.websocket;
            sum.sse += counts.sse;
            sum.webtransport += counts.webtransport;
            sum.position = sum.position.or(counts.position);
            g.sum.set(sum);
            g.remaining.set(g.remaining.get().saturating_sub(1));
            g.remaining.get() == 0
        };
        if finished {
            if let Some(g) = self.infos.borrow_mut().remove(&token) {
                g.done.fill(g.sum.get());
            }
        }
    }

    /// Drop a request whose waiter is gone.
    pub(crate) fn forget(&self, token: u64) {
        self.acks.borrow_mut().remove(&token);
        self.infos.borrow_mut().remove(&token);
    }
}
