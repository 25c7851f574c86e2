//! How worker replicas share the shard queues of the raw destinations, so that each
//! shard is consumed by one replica at a time and the replicas split the shards evenly.
//!
//! - **Membership.** Each replica holds one *member slot*: an exclusive consumer on a
//!   queue `{prefix}{worker.group_id}.member.{k}`, `k < rabbitmq.shards`. RabbitMQ drops
//!   the consumer with the replica's connection, so a dead replica frees its slot
//!   without a timeout of ours. Every `rabbitmq.rebalance_interval_ms` a replica counts
//!   the held slots (each declare answers its consumer count): `count` members, and its
//!   own `position` among them. A replica that finds no free slot stands by and tries
//!   again at each interval.
//! - **Assignment.** Shard `i` of every raw destination belongs to the member at
//!   position `i mod count`: a pure function of the membership, so replicas agree
//!   without talking once they see the same slots.
//! - **One consumer at a time.** A shard queue is single-active-consumer: while two
//!   replicas disagree for an interval and both subscribe, RabbitMQ delivers to one
//!   only, and makes the other active only once the first is gone. A replica hands a
//!   shard over by stopping its reads, waiting until every delivery it handed to the
//!   worker is acknowledged, and only then closing the shard's channel, which returns
//!   what it had prefetched to the queue in order. So a resource's events are never in
//!   two replicas at once; a replica that dies has its unacknowledged deliveries
//!   returned, in order, to the next. (Not exclusive consumers: RabbitMQ 3.10 was seen
//!   to stop accepting connections when a connection holding hundreds of exclusive
//!   consumers on quorum queues dropped; single active consumers did not do that.)
//!
//! Queues that are not shards (an enriched destination read by `pcbridge dev`'s
//! observer) are consumed plainly, by every replica at once.

use super::consumer::to_delivery;
use super::topology::Topology;
use crate::broker::Delivery;
use futures::StreamExt;
use lapin::{
    Channel, Connection,
    options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Counts a delivery handed to the worker until its acknowledgement (or its drop), so
/// that a shard is handed over only when nothing of it is still being worked on.
pub(crate) struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

/// What the sharing needs to know.
pub(super) struct Sharing {
    pub topology: Topology,
    /// Every queue to consume, with its shard number (`None`: not a shard).
    pub queues: Vec<(String, Option<u16>)>,
    /// Unacknowledged deliveries on a queue that is not a shard (`worker.prefetch`).
    pub prefetch: u16,
    /// Unacknowledged deliveries per shard: `worker.prefetch` split over a destination's
    /// shards, so that one replica holding every shard of a busy destination has
    /// `worker.prefetch` in flight from it, and 25 busy destinations do not multiply it
    /// by 300 channels.
    pub shard_prefetch: u16,
    /// `{prefix}{worker.group_id}.member`: the member slots' stem.
    pub member_stem: String,
    pub interval: Duration,
}

/// Why [`Sharing::run`] returned.
pub(super) enum Ended {
    Stopped,
    Broken,
}

/// One queue this replica consumes.
struct Held {
    /// Starts the hand-over: stop reading, wait for the in-flight deliveries, close.
    release: CancellationToken,
    task: JoinHandle<()>,
}

/// This replica's member slot, held as long as the exclusive consumer lives.
struct Member {
    slot: u16,
    channel: Channel,
    _consumer: lapin::Consumer,
}

impl Sharing {
    pub fn new(topology: Topology, sources: &[String], prefetch: u16, member_stem: String, interval: Duration) -> Self {
        let queues = sources
            .iter()
            .flat_map(|d| topology.queues(d))
            .map(|q| {
                let shard = topology.shard(&q).map(|(_, i)| i);
                (q, shard)
            })
            .collect();
        let shard_prefetch = prefetch.div_ceil(topology.shards).max(1);
        Self { topology, queues, prefetch, shard_prefetch, member_stem, interval }
    }

    /// Takes and hands over queues on `connection` until stopped or the connection breaks.
    pub async fn run(&self, connection: &Connection, tx: &mpsc::Sender<Delivery>, stop: &CancellationToken) -> Ended {
        let sharded = self.queues.iter().any(|(_, shard)| shard.is_some());
        let mut probe: Option<Channel> = None;
        let mut member: Option<Member> = None;
        let mut held: HashMap<String, Held> = HashMap::new();
        let mut last_view = None;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                () = stop.cancelled() => break Ended::Stopped,
                _ = ticker.tick() => {}
            }
            if !connection.status().connected() {
                break Ended::Broken;
            }
            held.retain(|_, h| !h.task.is_finished());
            if member.as_ref().is_some_and(|m| !m.channel.status().connected()) {
                member = None;
            }
            let view = if sharded {
                if member.is_none() {
                    member = self.join(connection, &mut probe).await;
                }
                match &member {
                    Some(m) => match self.members(connection, &mut probe, m.slot).await {
                        Ok(view) => Some(view),
                        Err(e) => {
                            tracing::warn!(error = %e, "rabbitmq: cannot count the worker replicas; trying again");
                            continue;
                        }
                    },
                    None => None,
                }
            } else {
                None
            };
            let wanted: HashSet<&str> = self
                .queues
                .iter()
                .filter(|(_, shard)| match (shard, view) {
                    (None, _) => true,
                    (Some(i), Some((position, count))) => i % count == position,
                    (Some(_), None) => false,
                })
                .map(|(q, _)| q.as_str())
                .collect();
            for (queue, h) in &held {
                if !wanted.contains(queue.as_str()) && !h.release.is_cancelled() {
                    tracing::debug!(queue, "handing the shard over");
                    h.release.cancel();
                }
            }
            for (queue, shard) in &self.queues {
                if wanted.contains(queue.as_str())
                    && !held.contains_key(queue)
                    && let Some(h) = self.take(connection, &mut probe, queue, shard.is_some(), tx).await
                {
                    held.insert(queue.clone(), h);
                }
            }
            if sharded && last_view != Some((view, held.len())) {
                last_view = Some((view, held.len()));
                match view {
                    Some((position, count)) => tracing::info!(
                        replica = position + 1,
                        replicas = count,
                        queues = held.len(),
                        "rabbitmq: consuming this replica's shards"
                    ),
                    None => {
                        tracing::info!("rabbitmq: every member slot is taken (replicas ≥ rabbitmq.shards); standing by")
                    }
                }
            }
        };
        // The connection is closing: its close returns every unacknowledged delivery.
        for h in held.values() {
            h.task.abort();
        }
        ended
    }

    /// Declares member slot `k` (kept while any replica declares it) and says how many
    /// consumers hold it.
    async fn slot_holders(
        &self,
        connection: &Connection,
        probe: &mut Option<Channel>,
        k: u16,
    ) -> Result<u32, lapin::Error> {
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
        let name = format!("{}.{k}", self.member_stem);
        consumers(connection, probe, &name, QueueDeclareOptions::default(), args).await
    }

    /// Takes the first free member slot, if there is one.
    async fn join(&self, connection: &Connection, probe: &mut Option<Channel>) -> Option<Member> {
        for slot in 0..self.topology.shards {
            match self.slot_holders(connection, probe, slot).await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "rabbitmq: cannot declare a member slot");
                    return None;
                }
            }
            let Ok(channel) = connection.create_channel().await else { return None };
            let name = format!("{}.{slot}", self.member_stem);
            let options = BasicConsumeOptions { exclusive: true, no_ack: true, ..Default::default() };
            // Refused when another replica took the slot since the count: try the next.
            if let Ok(consumer) =
                channel.basic_consume(name.as_str().into(), "".into(), options, FieldTable::default()).await
            {
                return Some(Member { slot, channel, _consumer: consumer });
            }
        }
        None
    }

    /// This replica's position among the members, and their count.
    async fn members(
        &self,
        connection: &Connection,
        probe: &mut Option<Channel>,
        me: u16,
    ) -> Result<(u16, u16), lapin::Error> {
        let (mut position, mut count) = (0, 0);
        for slot in 0..self.topology.shards {
            if slot == me {
                position = count;
                count += 1;
            } else if self.slot_holders(connection, probe, slot).await? > 0 {
                count += 1;
            }
        }
        Ok((position, count))
    }

    /// Starts consuming `queue` on a channel of its own. A shard is taken only when no
    /// one consumes it: its previous owner has closed its channel, so what it had is
    /// acknowledged or back in the queue.
    async fn take(
        &self,
        connection: &Connection,
        probe: &mut Option<Channel>,
        queue: &str,
        shard: bool,
        tx: &mpsc::Sender<Delivery>,
    ) -> Option<Held> {
        // A shard still held (its owner draining it) is left for the next interval;
        // subscribing anyway would only queue this replica behind it.
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        if shard && consumers(connection, probe, queue, passive, FieldTable::default()).await.ok()? > 0 {
            return None;
        }
        let channel = connection.create_channel().await.ok()?;
        let prefetch = if shard { self.shard_prefetch } else { self.prefetch };
        channel.basic_qos(prefetch, BasicQosOptions::default()).await.ok()?;
        let options = BasicConsumeOptions::default();
        let consumer = match channel.basic_consume(queue.into(), "".into(), options, FieldTable::default()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(queue, error = %e, "rabbitmq: cannot consume; trying at the next interval");
                return None;
            }
        };
        let release = CancellationToken::new();
        let task = tokio::spawn(read(channel, consumer, tx.clone(), self.topology.clone(), release.clone()));
        Some(Held { release, task })
    }
}

/// Declares `name` with `options` on the probe channel (opening a new one if a refused
/// declare closed it) and says how many consumers it has.
async fn consumers(
    connection: &Connection,
    probe: &mut Option<Channel>,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Result<u32, lapin::Error> {
    let channel = match probe {
        Some(c) if c.status().connected() => c.clone(),
        _ => {
            let c = connection.create_channel().await?;
            *probe = Some(c.clone());
            c
        }
    };
    Ok(channel.queue_declare(name.into(), options, args).await?.consumer_count())
}

/// Hands one queue's deliveries to the worker until released or the channel ends; on
/// release, waits for what is in flight to be acknowledged, then closes the channel.
async fn read(
    channel: Channel,
    mut consumer: lapin::Consumer,
    tx: mpsc::Sender<Delivery>,
    topology: Topology,
    release: CancellationToken,
) {
    let in_flight = Arc::new(watch::channel(0usize).0);
    loop {
        let next = tokio::select! {
            () = release.cancelled() => break,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(d)) => {
                let delivery = to_delivery(d, &topology, Some(InFlight::new(&in_flight)));
                tokio::select! {
                    // Dropped unacknowledged: the close below returns it to the queue.
                    () = release.cancelled() => break,
                    sent = tx.send(delivery) => if sent.is_err() { return },
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "rabbitmq consumer failed");
                return;
            }
            None => return,
        }
    }
    let _ = in_flight.subscribe().wait_for(|n| *n == 0).await;
    let _ = channel.close(200, "shard handed over".into()).await;
}
