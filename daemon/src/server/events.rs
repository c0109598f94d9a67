//! `qwend.v1.Events`: the `Watch` stream for editor plugins.
use std::sync::Arc;

use qwend_shared::api::events_server::Events;
use qwend_shared::api::{Event, WatchRequest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::events::Hub;

/// Events in flight to one subscriber's connection; beyond this (and the hub's buffer) a
/// slow reader misses events and gets a `dropped` marker instead.
const PER_SUBSCRIBER: usize = 16;

#[derive(Debug, Clone)]
pub struct EventsService {
    hub: Arc<Hub>,
}

impl EventsService {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl Events for EventsService {
    type WatchStream = ReceiverStream<Result<Event, Status>>;

    async fn watch(
        &self,
        _req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut sub = self.hub.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(PER_SUBSCRIBER);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = sub.next() => match ev {
                        Some(ev) => {
                            if tx.send(Ok(ev)).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    // The subscriber went away: stop at once, not at the next event.
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
