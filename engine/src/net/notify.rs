//! A one-shot, single-thread notification (e.g. "this shard is draining").

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Fires once; every waiter (past and future) then completes.
#[derive(Debug, Default)]
pub(crate) struct LocalNotify {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl LocalNotify {
    /// Fire and wake every waiter.
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Whether it has fired.
    pub(crate) fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Wait until it fires.
    pub(crate) async fn wait(&self) {
        poll_fn(|cx| {
            if self.fired.get() {
                Poll::Ready(())
            } else {
                let mut w = self.waiters.borrow_mut();
                if !w.iter().any(|x| x.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}
