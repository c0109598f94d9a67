//! The event hub behind `Events.Watch`: publishers never wait, subscribers get a bounded
//! buffer each and a "dropped" marker when they fall behind.
use std::sync::atomic::{AtomicU64, Ordering};

use qwend_shared::api::{Event, EventsDropped, event::Kind};
use tokio::sync::broadcast;

use crate::clock::SharedClock;

/// Events kept for the slowest subscriber before it starts missing some.
pub const BUFFER: usize = 256;

#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
    clock: SharedClock,
}

impl Hub {
    pub fn new(clock: SharedClock) -> Self {
        let (tx, _) = broadcast::channel(BUFFER);
        Self {
            tx,
            seq: AtomicU64::new(0),
            clock,
        }
    }

    /// Publish to every current subscriber; free when nobody listens.
    pub fn publish(&self, kind: Kind) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms: self.clock.now_ms(),
            kind: Some(kind),
        });
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
            done: false,
        }
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<Event>,
    done: bool,
}

impl Subscription {
    /// The next event; a `dropped` marker when this subscriber fell behind; `None` after
    /// `shutting_down` (delivered) or when the hub is gone.
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        match self.rx.recv().await {
            Ok(ev) => {
                if matches!(ev.kind, Some(Kind::ShuttingDown(_))) {
                    self.done = true;
                }
                Some(ev)
            }
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Event {
                seq: 0,
                at_ms: 0,
                kind: Some(Kind::Dropped(EventsDropped { count: n })),
            }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use qwend_shared::api::{QuotaChanged, ShuttingDown};

    fn quota(n: u64) -> Kind {
        Kind::QuotaChanged(QuotaChanged {
            account: "a".into(),
            minute_used: n,
            day_used: n,
            cool_down_ms: 0,
        })
    }

    #[tokio::test]
    async fn a_slow_subscriber_gets_a_dropped_marker_and_memory_stays_bounded() {
        let hub = Hub::new(ManualClock::new(5));
        let mut fast = hub.subscribe();
        let mut slow = hub.subscribe();
        for i in 0..10_000 {
            hub.publish(quota(i));
            if i % 100 == 0 {
                // The fast one keeps up with what it is given.
                while let Ok(Some(_)) =
                    tokio::time::timeout(std::time::Duration::ZERO, fast.next()).await
                {
                }
            }
        }
        let first = slow.next().await.unwrap();
        match first.kind {
            Some(Kind::Dropped(EventsDropped { count })) => {
                assert_eq!(count, 10_000 - BUFFER as u64)
            }
            other => panic!("expected a dropped marker, got {other:?}"),
        }
        let next = slow.next().await.unwrap();
        assert_eq!(next.seq, 10_000 - BUFFER as u64 + 1);
        assert_eq!(next.at_ms, 5);
    }

    #[tokio::test]
    async fn the_stream_ends_after_shutting_down() {
        let hub = Hub::new(ManualClock::new(0));
        let mut s = hub.subscribe();
        hub.publish(Kind::ShuttingDown(ShuttingDown {}));
        assert!(matches!(
            s.next().await.unwrap().kind,
            Some(Kind::ShuttingDown(_))
        ));
        assert!(s.next().await.is_none());
    }

    #[test]
    fn publishing_without_subscribers_costs_nothing() {
        let hub = Hub::new(ManualClock::new(0));
        hub.publish(quota(1));
        assert_eq!(hub.subscribers(), 0);
    }
}
