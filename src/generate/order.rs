//! Program order for the calls on one [`ChatSession`](super::ChatSession): every call that
//! reads or changes the conversation takes a [`Ticket`] when it is made and runs when the
//! calls made before it have ended. A turn started with `spawn` takes its ticket on the
//! caller's thread (so `spawn` still returns at once) and its worker runs that turn only when
//! the session's earlier calls are done, while a later `truncate`, `messages` or `send` waits
//! for the spawned turn, even when its handle was dropped before the worker thread started.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The ticket counter of a session.
#[derive(Debug, Default)]
pub(crate) struct Order {
    inner: Mutex<Queue>,
    served: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    /// The next ticket to hand out.
    next: u64,
    /// The ticket whose call may run now.
    serving: u64,
    /// Tickets given up before their turn came (skipped when it does).
    abandoned: BTreeSet<u64>,
}

impl Order {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // The counter stays consistent through a panic elsewhere: every change is one step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ticket behind every call taken so far.
    pub(crate) fn ticket(self: &Arc<Self>) -> Ticket {
        let mut q = self.queue();
        let n = q.next;
        q.next += 1;
        Ticket {
            order: self.clone(),
            n,
        }
    }
}

/// A place in a session's order; the next call runs once this is dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    order: Arc<Order>,
    n: u64,
}

impl Ticket {
    /// Blocks until every call taken before this one has ended.
    pub(crate) fn wait(&self) {
        let mut q = self.order.queue();
        while q.serving != self.n {
            q = self
                .order
                .served
                .wait(q)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut q = self.order.queue();
        if q.serving == self.n {
            q.serving += 1;
            loop {
                let s = q.serving;
                if !q.abandoned.remove(&s) {
                    break;
                }
                q.serving += 1;
            }
            self.order.served.notify_all();
        } else {
            // Dropped before its turn (e.g. a worker thread that could not start).
            q.abandoned.insert(self.n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn calls_run_in_the_order_their_tickets_were_taken() {
        let order = Arc::new(Order::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let tickets: Vec<Ticket> = (0..5).map(|_| order.ticket()).collect();
        // Start the workers in reverse order; each logs its index once served.
        let threads: Vec<_> = tickets
            .into_iter()
            .enumerate()
            .rev()
            .map(|(i, t)| {
                let log = log.clone();
                std::thread::spawn(move || {
                    t.wait();
                    std::thread::sleep(Duration::from_millis(5));
                    log.lock().unwrap().push(i);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn an_abandoned_ticket_does_not_block_the_ones_after_it() {
        let order = Arc::new(Order::default());
        let first = order.ticket();
        let second = order.ticket();
        let third = order.ticket();
        drop(second); // given up before its turn
        drop(first);
        let done = std::thread::spawn(move || third.wait());
        done.join().unwrap();
        // And a fresh ticket is served after the third was dropped.
        order.ticket().wait();
    }
}
