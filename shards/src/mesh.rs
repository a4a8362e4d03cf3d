//! The cross-shard mesh: one bounded MPSC inbox per shard plus its doorbell.
//!
//! Wired once at start-up ([`Mesh::new`]); senders are cloned out to every shard and to
//! any other thread that needs to hand work to a shard. A full inbox hands the message
//! back to the sender instead of blocking a shard thread: the caller decides what an
//! overflow means (the engine counts it and reports it).

use std::io;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::doorbell::{doorbell, Bell, Listener, LocalListener};

/// Sends messages to one shard. `Clone + Send + Sync` when `T: Send`.
#[derive(Debug)]
pub struct MeshSender<T> {
    tx: Sender<T>,
    bell: Arc<Bell>,
}

impl<T> Clone for MeshSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> MeshSender<T> {
    /// Queue `msg` for the shard and ring its doorbell. A full inbox (or a shard that
    /// has exited) returns the message unsent.
    pub fn send(&self, msg: T) -> Result<(), T> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.bell.ring();
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Ring the shard's doorbell without sending anything (e.g. to make it look at a
    /// shared flag).
    pub fn ring(&self) {
        self.bell.ring();
    }

    /// Messages currently queued for the shard.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

/// The receiving end of one shard's inbox, before it is attached to its shard (`Send`).
#[derive(Debug)]
pub struct Inbox<T> {
    rx: Receiver<T>,
    listener: Listener,
}

impl<T> Inbox<T> {
    /// Take one queued message without waiting, from any thread (for tests and
    /// tools that stand in for a shard; a shard uses [`LocalInbox`]).
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Attach to the calling thread's glommio executor (call on the shard's thread).
    pub fn attach(self) -> LocalInbox<T> {
        LocalInbox {
            rx: self.rx,
            listener: self.listener.attach(),
        }
    }
}

/// A shard's inbox attached to its executor.
#[derive(Debug)]
pub struct LocalInbox<T> {
    rx: Receiver<T>,
    listener: LocalListener,
}

impl<T> LocalInbox<T> {
    /// Wait until at least one message is queued, then move up to `max` of them into
    /// `out`. Sleeps in io_uring (via the doorbell) while the inbox is empty.
    pub async fn recv_batch(&mut self, out: &mut Vec<T>, max: usize) -> io::Result<usize> {
        loop {
            let n = self.drain(out, max);
            if n > 0 {
                return Ok(n);
            }
            self.listener.wait().await?;
        }
    }

    /// Move up to `max` queued messages into `out` without waiting.
    pub fn drain(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(m) => {
                    out.push(m);
                    n += 1;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        n
    }
}

/// All inboxes and senders of a set of shards, built once at start-up.
#[derive(Debug)]
pub struct Mesh<T> {
    senders: Vec<MeshSender<T>>,
    inboxes: Vec<Option<Inbox<T>>>,
}

impl<T> Mesh<T> {
    /// Build a mesh of `shards` inboxes, each holding at most `capacity` messages.
    pub fn new(shards: usize, capacity: usize) -> io::Result<Self> {
        let mut senders = Vec::with_capacity(shards);
        let mut inboxes = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
            let (bell, listener) = doorbell()?;
            senders.push(MeshSender { tx, bell });
            inboxes.push(Some(Inbox { rx, listener }));
        }
        Ok(Self { senders, inboxes })
    }

    /// A sender for every shard, indexed by shard id.
    pub fn senders(&self) -> Vec<MeshSender<T>> {
        self.senders.clone()
    }

    /// Take shard `shard`'s inbox (once).
    pub fn take_inbox(&mut self, shard: usize) -> Option<Inbox<T>> {
        self.inboxes.get_mut(shard).and_then(Option::take)
    }
}
