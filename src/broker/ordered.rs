//! Consuming in key order with bounded concurrency, for every role that reads a
//! destination (the worker, the forwarder): deliveries with one key (the ResourceUri)
//! are handled one after the other, in arrival order, while many keys proceed at once.
//!
//! Each key with work has one *chain*: a task that handles that key's deliveries in
//! turn. At most `concurrency` chains hold a [`Slot`] at once, and at most
//! `concurrency × (1 + QUEUE_DEPTH)` deliveries are held in all, which is the
//! back-pressure reaching the broker. A handler may give its slot back while it waits on
//! something that is not its own work (a broker confirm, a retry delay) and take one
//! again later; its chain still finishes the delivery, acknowledgement included, before
//! it starts the key's next one. Unlike fixed lanes picked by a hash, a busy key never
//! holds up deliveries of other keys: with 64 lanes and random keys, the dispatcher
//! waiting on the one full lane kept the worker at about half of its concurrency
//! (docs/BENCHMARKS.md).

use super::{Consumer, Delivery};
use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// Deliveries held per unit of concurrency beyond the one being handled; keeps memory
/// bounded and back-pressure reaching the broker.
pub const QUEUE_DEPTH: usize = 4;

/// One of the `concurrency` units of work, held by a handler while it works.
pub struct Slot {
    running: Arc<Semaphore>,
    /// `None` while given back.
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Gives the slot back to other chains (waiting on something that is not work).
    pub fn release(&mut self) {
        self.permit = None;
    }

    /// Takes a slot again after [`Slot::release`], waiting for one to be free.
    pub async fn acquire(&mut self) {
        if self.permit.is_none() {
            self.permit = self.running.clone().acquire_owned().await.ok();
        }
    }
}

/// Deliveries waiting behind an earlier one with the same key, by key; each holds its
/// `admitted` permit until handled.
type Chains = Arc<Mutex<HashMap<String, VecDeque<(Delivery, OwnedSemaphorePermit)>>>>;

/// Consumes `consumer` until `stop` is cancelled (or the consumer closes), handing each
/// delivery to `handle` in key order, then lets the chains finish what they hold. The
/// handler acknowledges (or leaves unacknowledged) the delivery itself.
pub async fn run<H, F>(consumer: Arc<dyn Consumer>, concurrency: usize, stop: CancellationToken, handle: H)
where
    H: Fn(Delivery, Slot) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let running = Arc::new(Semaphore::new(concurrency.max(1)));
    let admitted = Arc::new(Semaphore::new(concurrency.max(1) * (1 + QUEUE_DEPTH)));
    let chains: Chains = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            p = admitted.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let delivery = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            d = consumer.recv() => d,
        };
        let Some(d) = delivery else { break };
        let key = d.key.clone();
        {
            let mut chains = chains.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(queue) = chains.get_mut(&key) {
                queue.push_back((d, permit));
                continue;
            }
            chains.insert(key.clone(), VecDeque::new());
        }
        let (running, chains, handle) = (running.clone(), chains.clone(), handle.clone());
        tasks.spawn(async move {
            let mut next = Some((d, permit));
            while let Some((d, _held)) = next {
                let Ok(permit) = running.clone().acquire_owned().await else { return };
                handle(d, Slot { running: running.clone(), permit: Some(permit) }).await;
                let mut chains = chains.lock().unwrap_or_else(|p| p.into_inner());
                next = chains.get_mut(&key).and_then(VecDeque::pop_front);
                if next.is_none() {
                    chains.remove(&key);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
