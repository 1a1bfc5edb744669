//! The poll thread: records into chunks, back-pressure without losing the group,
//! seeks and group offsets on the pipeline's command.

use super::*;

pub(super) const MAX_CHUNK_BYTES: usize = 8 * 1024 * 1024;
pub(super) const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// Epoch of a partition whose seek is pending: its records are not handed on.
pub(super) const BLOCKED: u64 = 0;

/// Set a partition's epoch; false if it is not assigned.
pub(super) fn set_epoch(
    consumer: &BaseConsumer<IngestContext>,
    tp: &TopicPartition,
    epoch: u64,
) -> bool {
    consumer.context().epochs.update(|epochs| {
        match epochs
            .get_mut(&tp.topic)
            .and_then(|m| m.get_mut(&tp.partition))
        {
            Some(e) => {
                *e = epoch;
                true
            }
            None => false,
        }
    })
}

pub(super) fn is_assigned(consumer: &BaseConsumer<IngestContext>, tp: &TopicPartition) -> bool {
    consumer
        .context()
        .epochs
        .get(&tp.topic, tp.partition)
        .is_some()
}

/// How long `poll` waits while the consumer is paused on back-pressure: the thread
/// sleeps in librdkafka (serving heartbeats and rebalances) instead of spinning.
pub(super) const PAUSED_POLL: Duration = Duration::from_millis(50);

/// How long one wait for room in the channel lasts before the loop goes round
/// (commands, seeks) again.
pub(super) const ROOM_WAIT: Duration = Duration::from_millis(100);

/// How long the channel must stay full before the partitions are paused and
/// polling resumes. Shorter stalls (a window waiting for the previous commit) are
/// waited out: rebalance callbacks are served at most this late.
pub(super) const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// When to pause: after the channel has stayed full for [`PAUSE_AFTER`].
#[derive(Debug, Default)]
pub(super) struct PausePolicy {
    full_since: Option<Instant>,
}

impl PausePolicy {
    /// The channel is full at `now`: whether to pause.
    pub(super) fn full(&mut self, now: Instant) -> bool {
        let since = *self.full_since.get_or_insert(now);
        now.duration_since(since) >= PAUSE_AFTER
    }

    /// The channel took a chunk: it is moving.
    pub(super) fn took(&mut self) {
        self.full_since = None;
    }
}

/// What a wait for room in the channel ended with.
pub(super) enum Room<'a> {
    Free(mpsc::Permit<'a, RecordChunk>),
    Full,
    Closed,
}

/// Wait up to `wait` for room in `chunks`, blocking this (non-async) thread: it is
/// woken as soon as the pipeline takes a chunk. No runtime is needed: the reserve
/// future is polled here with a waker that unparks the thread.
pub(super) fn wait_for_room(chunks: &mpsc::Sender<RecordChunk>, wait: Duration) -> Room<'_> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let deadline = Instant::now() + wait;
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut reserve = std::pin::pin!(chunks.reserve());
    loop {
        match reserve.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(permit)) => return Room::Free(permit),
            std::task::Poll::Ready(Err(_)) => return Room::Closed,
            std::task::Poll::Pending => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Room::Full;
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// Chunks polled but not yet taken by the pipeline, with the pause they cause.
///
/// A channel that stays full pauses every assigned partition; polling goes on
/// (callbacks, heartbeats, `max.poll.interval.ms`), and records librdkafka had
/// already fetched are held here, never dropped. They are sent in order once the
/// channel has room, and the partitions resume when nothing is held.
#[derive(Default)]
pub(super) struct Held {
    chunks: std::collections::VecDeque<RecordChunk>,
    paused: Option<TopicPartitionList>,
    policy: PausePolicy,
}

impl Held {
    /// Send what the channel takes, waiting a little for room; pause once it has
    /// stayed full for [`PAUSE_AFTER`], resume once nothing is held. `false` when
    /// the pipeline is gone.
    pub(super) fn flush(
        &mut self,
        consumer: &BaseConsumer<IngestContext>,
        chunks: &mpsc::Sender<RecordChunk>,
    ) -> bool {
        while let Some(chunk) = self.chunks.pop_front() {
            match chunks.try_send(chunk) {
                Ok(()) => self.policy.took(),
                Err(mpsc::error::TrySendError::Full(chunk)) => {
                    let wait = if self.paused.is_some() {
                        PAUSED_POLL
                    } else {
                        ROOM_WAIT
                    };
                    match wait_for_room(chunks, wait) {
                        Room::Free(permit) => {
                            permit.send(chunk);
                            self.policy.took();
                            continue;
                        }
                        Room::Closed => return false,
                        Room::Full => self.chunks.push_front(chunk),
                    }
                    if self.policy.full(Instant::now())
                        && self.paused.is_none()
                        && let Ok(assignment) = consumer.assignment()
                    {
                        let _ = consumer.pause(&assignment);
                        self.paused = Some(assignment);
                    }
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        if let Some(tpl) = self.paused.take() {
            let _ = consumer.resume(&tpl);
        }
        true
    }

    /// Chunks are held and the partitions are not paused yet: the loop waits for
    /// room instead of polling more records.
    pub(super) fn waiting_for_room(&self) -> bool {
        !self.chunks.is_empty() && self.paused.is_none()
    }

    pub(super) fn is_paused(&self) -> bool {
        !self.chunks.is_empty()
    }

    pub(super) fn drop_partition(&mut self, tp: &TopicPartition) {
        for chunk in &mut self.chunks {
            drop_partition(chunk, tp);
        }
    }
}

/// What one poll burst ended with.
pub(super) enum Burst {
    /// Keep going.
    More,
    /// librdkafka reported a fatal error: the consumer cannot go on.
    Fatal(String),
}

/// A seek the pipeline asked for: partition, where to, under which epoch.
type PendingSeek = (TopicPartition, StartAt, u64);

/// Take the pipeline's commands; false when it asks the thread to stop (or is gone).
fn serve_commands(
    consumer: &BaseConsumer<IngestContext>,
    commands: &std_mpsc::Receiver<SourceCommand>,
    held: &mut Held,
    seeks: &mut Vec<PendingSeek>,
) -> bool {
    loop {
        match commands.try_recv() {
            Ok(SourceCommand::Seek { tp, to, epoch }) => {
                if set_epoch(consumer, &tp, BLOCKED) {
                    held.drop_partition(&tp);
                    seeks.retain(|(t, _, _)| t != &tp);
                    seeks.push((tp, to, epoch));
                }
            }
            Ok(SourceCommand::CommitOffsets(offsets)) => commit_group_offsets(consumer, &offsets),
            Ok(SourceCommand::Shutdown) | Err(std_mpsc::TryRecvError::Disconnected) => {
                return false;
            }
            Err(std_mpsc::TryRecvError::Empty) => return true,
        }
    }
}

/// Try a pending seek; true when it is done (or its partition is gone). A
/// blocking seek reports failures (e.g. fetch not started yet); an asynchronous
/// one would not.
fn try_seek(
    consumer: &BaseConsumer<IngestContext>,
    tp: &TopicPartition,
    to: StartAt,
    epoch: u64,
) -> bool {
    if !is_assigned(consumer, tp) {
        return true;
    }
    match consumer.seek(&tp.topic, tp.partition, to.offset(), SEEK_TIMEOUT) {
        Ok(()) => {
            set_epoch(consumer, tp, epoch);
            true
        }
        Err(e) => {
            tracing::debug!(partition = %tp, error = %e, "seek not accepted yet; retrying");
            false
        }
    }
}

pub(super) fn poll_loop(
    consumer: BaseConsumer<IngestContext>,
    chunks: mpsc::Sender<RecordChunk>,
    commands: std_mpsc::Receiver<SourceCommand>,
    events: mpsc::UnboundedSender<SourceEvent>,
    max_records: usize,
) {
    let mut held = Held::default();
    // Seeks not yet confirmed by librdkafka. Until one succeeds, its partition's
    // records are dropped here (epoch 0): a failed seek must never let records from
    // the old position through under the new epoch, which would skip offsets.
    let mut seeks: Vec<PendingSeek> = Vec::new();
    let mut epoch_cache: Option<EpochCache> = None;
    loop {
        if !serve_commands(&consumer, &commands, &mut held, &mut seeks) {
            break;
        }
        seeks.retain(|(tp, to, epoch)| !try_seek(&consumer, tp, *to, *epoch));
        if !held.flush(&consumer, &chunks) {
            break;
        }
        if held.waiting_for_room() {
            continue;
        }
        // While paused, poll waits longer (there is nothing to fetch) and only
        // serves callbacks; records that were already queued are held.
        let timeout = if held.is_paused() {
            PAUSED_POLL
        } else {
            Duration::from_millis(100)
        };
        let mut chunk = RecordChunk::default();
        let burst = poll_burst(
            &consumer,
            &mut chunk,
            &mut epoch_cache,
            timeout,
            max_records,
        );
        if !chunk.is_empty() {
            held.chunks.push_back(chunk);
        }
        if let Burst::Fatal(message) = burst {
            tracing::error!(error = %message, "fatal kafka error; stopping");
            let _ = events.send(SourceEvent::Fatal(message));
            break;
        }
    }
    consumer.context().closing.store(true, Ordering::Release);
    consumer.unsubscribe();
    // Dropping the consumer closes it (leaving the group); callbacks no longer wait.
    drop(consumer);
}

/// Poll until `chunk` is full or nothing more is queued (waiting up to `timeout`
/// for the first event).
pub(super) fn poll_burst(
    consumer: &BaseConsumer<IngestContext>,
    chunk: &mut RecordChunk,
    epoch_cache: &mut Option<EpochCache>,
    timeout: Duration,
    max_records: usize,
) -> Burst {
    let mut wait = timeout;
    while chunk.len() < max_records && chunk.data_bytes() < MAX_CHUNK_BYTES {
        let polled = consumer.poll(wait);
        wait = Duration::ZERO;
        match polled {
            None => break,
            Some(Ok(msg)) => {
                let (topic, partition) = (msg.topic(), msg.partition());
                let epoch =
                    EpochCache::epoch(epoch_cache, &consumer.context().epochs, topic, partition);
                // Not (or no longer) assigned, or waiting for a seek.
                let Some(epoch) = epoch.filter(|e| *e != BLOCKED) else {
                    continue;
                };
                push_message(chunk, &msg, topic, partition, epoch);
            }
            Some(Err(e)) => {
                if let Some(message) = fatal_message(consumer, &e) {
                    return Burst::Fatal(message);
                }
                tracing::warn!(error = %e, "kafka poll error");
                break;
            }
        }
    }
    // A fatal error the error callback saw during these polls; checked once per
    // burst, not per message (the lock stays off the per-record path).
    match consumer.context().fatal.lock().ok().and_then(|f| f.clone()) {
        Some(message) => Burst::Fatal(message),
        None => Burst::More,
    }
}

/// The fatal error behind `e`, if it is one: the consumer can no longer make
/// progress (a fenced static member, a fatal idempotence or authorization state).
pub(super) fn fatal_message(
    consumer: &BaseConsumer<IngestContext>,
    e: &KafkaError,
) -> Option<String> {
    let fatal = match e {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => *code == rdkafka::types::RDKafkaErrorCode::Fatal,
        _ => false,
    };
    fatal.then(|| match consumer.client().fatal_error() {
        Some((code, reason)) => format!("{reason} ({code:?})"),
        None => e.to_string(),
    })
}

pub(super) fn commit_group_offsets(
    consumer: &BaseConsumer<IngestContext>,
    offsets: &[(TopicPartition, i64)],
) {
    let mut tpl = TopicPartitionList::new();
    for (tp, next) in offsets {
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "consumer-group offset commit failed (monitoring only)");
    }
}

pub(super) fn push_message(
    chunk: &mut RecordChunk,
    msg: &rdkafka::message::BorrowedMessage<'_>,
    topic: &str,
    partition: i32,
    epoch: u64,
) {
    // Most messages continue the run of the one before: no lookup, no allocation.
    let part = match chunk.partitions.last() {
        Some(last)
            if last.epoch == epoch
                && last.tp.partition == partition
                && *last.tp.topic == *topic =>
        {
            (chunk.partitions.len() - 1) as u32
        }
        _ => chunk.partition_index(&TopicPartition::new(topic, partition), epoch),
    };
    let key = msg.key().map(|k| chunk.push_bytes(k));
    let value = msg.payload().map(|v| chunk.push_bytes(v));
    let header_start = chunk.headers.len();
    if let Some(headers) = msg.headers() {
        for h in headers.iter() {
            let value = h.value.map(|v| chunk.push_bytes(v));
            chunk.headers.push(HeaderMeta {
                key: h.key.to_owned(),
                value,
            });
        }
    }
    let header_end = chunk.headers.len();
    chunk.records.push(RecordMeta {
        part,
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis(),
        key,
        value,
        headers: header_start..header_end,
    });
}

/// Remove a partition's records from a held chunk (after a seek).
pub(super) fn drop_partition(chunk: &mut RecordChunk, tp: &TopicPartition) {
    let parts: Vec<u32> = chunk
        .partitions
        .iter()
        .enumerate()
        .filter(|(_, p)| &p.tp == tp)
        .map(|(i, _)| i as u32)
        .collect();
    if !parts.is_empty() {
        chunk.records.retain(|r| !parts.contains(&r.part));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_full_channel_pauses_only_after_it_stayed_full_for_a_while() {
        use super::{PAUSE_AFTER, PausePolicy};
        let t0 = std::time::Instant::now();
        let ms = |n| std::time::Duration::from_millis(n);
        let mut p = PausePolicy::default();
        assert!(!p.full(t0));
        assert!(!p.full(t0 + PAUSE_AFTER - ms(1)));
        assert!(p.full(t0 + PAUSE_AFTER));
        // Any chunk taken means the pipeline is moving: the clock starts again.
        p.took();
        assert!(!p.full(t0 + PAUSE_AFTER + ms(10)));
        assert!(!p.full(t0 + PAUSE_AFTER * 2));
        assert!(p.full(t0 + PAUSE_AFTER * 2 + ms(10)));
    }

    #[test]
    fn waiting_for_room_wakes_when_the_pipeline_takes_a_chunk_and_gives_up_in_time() {
        use super::{Room, wait_for_room};
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(crate::record::RecordChunk::default()).unwrap();
        // Nobody takes: the wait ends at its bound.
        let t0 = std::time::Instant::now();
        assert!(matches!(
            wait_for_room(&tx, std::time::Duration::from_millis(30)),
            Room::Full
        ));
        assert!(t0.elapsed() >= std::time::Duration::from_millis(30));
        // The pipeline takes one: the waiter gets the slot (long before its bound).
        let taker = std::thread::spawn(move || {
            let got = rx.blocking_recv().is_some();
            (got, rx)
        });
        match wait_for_room(&tx, std::time::Duration::from_secs(60)) {
            Room::Free(permit) => permit.send(crate::record::RecordChunk::default()),
            _ => panic!("no room after the pipeline took a chunk"),
        }
        let (got, rx) = taker.join().unwrap();
        assert!(got);
        // The pipeline is gone: closed.
        drop(rx);
        assert!(matches!(
            wait_for_room(&tx, std::time::Duration::from_secs(60)),
            Room::Closed
        ));
    }
}
