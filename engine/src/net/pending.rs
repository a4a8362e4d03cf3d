//! Requests a shard is waiting on from other shards: publish acknowledgements
//! (the position the owner gave a message) and room-info gathers. Each waiter holds
//! a slot; the shard's inbox fills it when the answer arrives.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use corecast_shards::Position;

use crate::vocab::registry::{ConnInfo, PresenceMember};

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

/// Registry entries gathered from several shards.
pub(crate) type ConnList = (Vec<ConnInfo>, bool);

struct ListGather {
    remaining: Cell<usize>,
    limit: usize,
    items: RefCell<ConnList>,
    done: Rc<Slot<ConnList>>,
}

/// A shard's outstanding requests, by token.
#[derive(Default)]
pub(crate) struct Pending {
    next: Cell<u64>,
    acks: RefCell<HashMap<u64, Rc<Slot<Option<Position>>>>>,
    infos: RefCell<HashMap<u64, InfoGather>>,
    lists: RefCell<HashMap<u64, ListGather>>,
    flags: RefCell<HashMap<u64, Rc<Slot<bool>>>>,
    presence: RefCell<HashMap<u64, Rc<Slot<Vec<PresenceMember>>>>>,
    #[cfg(feature = "cluster")]
    answers: RefCell<HashMap<u64, Rc<Slot<crate::cluster::Answer>>>>,
}

impl Pending {
    fn token(&self) -> u64 {
        let t = self.next.get().wrapping_add(1);
        self.next.set(t);
        t
    }

    /// Register a publish acknowledgement to wait for (`None`: refused).
    pub(crate) fn new_ack(&self) -> (u64, Rc<Slot<Option<Position>>>) {
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
            slot.fill(Some(pos));
        }
    }

    /// A publish was refused (cluster mode: Redis failed it).
    #[cfg(feature = "cluster")]
    pub(crate) fn refuse(&self, token: u64) {
        if let Some(slot) = self.acks.borrow_mut().remove(&token) {
            slot.fill(None);
        }
    }

    /// Register a cluster query's answer to wait for.
    #[cfg(feature = "cluster")]
    pub(crate) fn new_answer(&self) -> (u64, Rc<Slot<crate::cluster::Answer>>) {
        let token = self.token();
        let slot = Rc::new(Slot::default());
        self.answers.borrow_mut().insert(token, slot.clone());
        (token, slot)
    }

    /// A cluster query's answer arrived.
    #[cfg(feature = "cluster")]
    pub(crate) fn answer(&self, token: u64, answer: crate::cluster::Answer) {
        if let Some(slot) = self.answers.borrow_mut().remove(&token) {
            slot.fill(answer);
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

    /// Register a gather of `shards` registry replies, keeping at most `limit`
    /// entries.
    pub(crate) fn new_list(&self, shards: usize, limit: usize) -> (u64, Rc<Slot<ConnList>>) {
        let token = self.token();
        let done = Rc::new(Slot::default());
        self.lists.borrow_mut().insert(
            token,
            ListGather {
                remaining: Cell::new(shards),
                limit,
                items: RefCell::new((Vec::new(), false)),
                done: done.clone(),
            },
        );
        (token, done)
    }

    /// One shard's registry reply arrived.
    pub(crate) fn list_reply(&self, token: u64, infos: Vec<ConnInfo>, truncated: bool) {
        let finished = {
            let lists = self.lists.borrow();
            let Some(g) = lists.get(&token) else {
                return;
            };
            let mut items = g.items.borrow_mut();
            items.1 |= truncated;
            for info in infos {
                if items.0.len() < g.limit {
                    items.0.push(info);
                } else {
                    items.1 = true;
                }
            }
            g.remaining.set(g.remaining.get().saturating_sub(1));
            g.remaining.get() == 0
        };
        if finished {
            if let Some(g) = self.lists.borrow_mut().remove(&token) {
                g.done.fill(g.items.into_inner());
            }
        }
    }

    /// Register a yes/no answer to wait for (did a `send_to` find its connection).
    pub(crate) fn new_flag(&self) -> (u64, Rc<Slot<bool>>) {
        let token = self.token();
        let slot = Rc::new(Slot::default());
        self.flags.borrow_mut().insert(token, slot.clone());
        (token, slot)
    }

    /// A yes/no answer arrived.
    pub(crate) fn flag_reply(&self, token: u64, value: bool) {
        if let Some(slot) = self.flags.borrow_mut().remove(&token) {
            slot.fill(value);
        }
    }

    /// Register a presence list to wait for.
    pub(crate) fn new_presence(&self) -> (u64, Rc<Slot<Vec<PresenceMember>>>) {
        let token = self.token();
        let slot = Rc::new(Slot::default());
        self.presence.borrow_mut().insert(token, slot.clone());
        (token, slot)
    }

    /// A presence list arrived.
    pub(crate) fn presence_reply(&self, token: u64, members: Vec<PresenceMember>) {
        if let Some(slot) = self.presence.borrow_mut().remove(&token) {
            slot.fill(members);
        }
    }

    /// Drop a request whose waiter is gone.
    pub(crate) fn forget(&self, token: u64) {
        self.acks.borrow_mut().remove(&token);
        self.infos.borrow_mut().remove(&token);
        self.lists.borrow_mut().remove(&token);
        self.flags.borrow_mut().remove(&token);
        self.presence.borrow_mut().remove(&token);
        #[cfg(feature = "cluster")]
        self.answers.borrow_mut().remove(&token);
    }
}
