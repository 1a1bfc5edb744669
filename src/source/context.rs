//! The consumer's context: librdkafka's log lines and statistics, and the
//! rebalance rendezvous (each callback waits for the pipeline's answer), with the
//! epochs that tag every partition's records.

use super::*;

pub(super) type EpochMap = HashMap<Arc<str>, HashMap<i32, u64>>;

/// Each assigned partition's epoch, with a generation bumped on every change so
/// the poll loop can keep the last lookup instead of locking per message.
#[derive(Default)]
pub(super) struct Epochs {
    map: Mutex<EpochMap>,
    generation: AtomicU64,
}

impl Epochs {
    /// Change the map; the generation moves on, so cached lookups are redone.
    pub(super) fn update<R>(&self, change: impl FnOnce(&mut EpochMap) -> R) -> R {
        let mut map = self.map.lock().expect("epoch map poisoned");
        let result = change(&mut map);
        self.generation.fetch_add(1, Ordering::Release);
        result
    }

    pub(super) fn get(&self, topic: &str, partition: i32) -> Option<u64> {
        let map = self.map.lock().expect("epoch map poisoned");
        map.get(topic).and_then(|m| m.get(&partition)).copied()
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The poll loop's last epoch lookup. librdkafka hands out a partition's messages
/// in runs, so this answers almost every message without the lock.
pub(super) struct EpochCache {
    generation: u64,
    topic: Arc<str>,
    partition: i32,
    epoch: Option<u64>,
}

impl EpochCache {
    pub(super) fn epoch(
        cache: &mut Option<Self>,
        epochs: &Epochs,
        topic: &str,
        partition: i32,
    ) -> Option<u64> {
        let generation = epochs.generation();
        if let Some(c) = cache.as_ref()
            && c.generation == generation
            && c.partition == partition
            && *c.topic == *topic
        {
            return c.epoch;
        }
        let epoch = epochs.get(topic, partition);
        *cache = Some(EpochCache {
            generation,
            topic: topic.into(),
            partition,
            epoch,
        });
        epoch
    }
}

pub(super) struct IngestContext {
    pub(super) stats: Arc<crate::telemetry::stats::PipelineStats>,
    pub(super) events: mpsc::UnboundedSender<SourceEvent>,
    pub(super) epochs: Epochs,
    pub(super) closing: AtomicBool,
    /// A fatal error librdkafka reported through the error callback; the poll
    /// loop stops on it.
    pub(super) fatal: Mutex<Option<String>>,
}

/// Write a librdkafka log line to tracing at the matching level; true for the
/// error levels.
pub(crate) fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, message: &str) -> bool {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility = fac, "{message}");
            true
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility = fac, "{message}");
            false
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility = fac, "{message}");
            false
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility = fac, "{message}");
            false
        }
    }
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        // High watermarks from fetch responses, for the lag metric.
        let marks: Vec<(TopicPartition, i64)> = statistics
            .topics
            .iter()
            .flat_map(|(topic, t)| {
                t.partitions
                    .iter()
                    .filter(|(p, s)| **p >= 0 && s.hi_offset >= 0)
                    .map(move |(p, s)| (TopicPartition::new(topic.as_str(), *p), s.hi_offset))
            })
            .collect();
        self.stats.set_high_watermarks(marks);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let stop = match error.rdkafka_error_code() {
            Some(Code::Fatal) => Some(reason.to_owned()),
            // librdkafka retries refused credentials for ever; they do not fix
            // themselves, so the daemon stops (a permanent fault) saying so.
            Some(Code::Authentication | Code::SaslAuthenticationFailed) => Some(format!(
                "the brokers refused the credentials: {reason}; check [kafka.properties] \
                 sasl.username, sasl.password and sasl.mechanism"
            )),
            _ => None,
        };
        if let Some(message) = stop {
            if let Ok(mut fatal) = self.fatal.lock() {
                fatal.get_or_insert(message);
            }
            return;
        }
        // Transport errors are retried by librdkafka; they are worth a warning, not
        // an error (no data is at risk while the broker is away).
        tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

pub(super) fn tpl_partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl IngestContext {
    /// Partitions assigned: ask the pipeline where each starts (its stored offset)
    /// and under which epoch, then take them from there.
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
        closing: bool,
    ) {
        let partitions = tpl_partitions(tpl);
        tracing::info!(partitions = ?partitions, "partitions assigned");
        let (reply, answer) = oneshot::channel();
        let starts = if closing
            || self
                .events
                .send(SourceEvent::Assigned {
                    partitions: partitions.clone(),
                    reply,
                })
                .is_err()
        {
            None
        } else {
            answer.blocking_recv().ok()
        };
        let Some(starts) = starts else {
            // The pipeline is gone: take no partitions, so none are read
            // without their stored offsets.
            let _ = if cooperative {
                Ok(())
            } else {
                consumer.unassign()
            };
            return;
        };
        self.epochs.update(|epochs| {
            for (tp, start, epoch) in &starts {
                if let Err(e) = tpl.set_partition_offset(&tp.topic, tp.partition, start.offset()) {
                    tracing::error!(partition = %tp, error = %e, "cannot set start offset");
                }
                epochs
                    .entry(tp.topic.clone())
                    .or_default()
                    .insert(tp.partition, *epoch);
            }
        });
        let result = if cooperative {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "assign failed");
        }
    }

    /// Partitions revoked: let the pipeline commit or drop what it holds of them,
    /// then give them up.
    fn revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
        closing: bool,
    ) {
        let partitions = tpl_partitions(tpl);
        let lost = consumer.assignment_lost();
        tracing::info!(partitions = ?partitions, lost, "partitions revoked");
        if !closing {
            let (reply, answer) = oneshot::channel();
            if self
                .events
                .send(SourceEvent::Revoked {
                    partitions: partitions.clone(),
                    lost,
                    reply,
                })
                .is_ok()
            {
                let _ = answer.blocking_recv();
            }
        }
        self.epochs.update(|epochs| {
            for tp in &partitions {
                if let Some(m) = epochs.get_mut(&tp.topic) {
                    m.remove(&tp.partition);
                }
            }
        });
        let result = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "unassign failed");
        }
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let closing = self.closing.load(Ordering::Acquire);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl, cooperative, closing);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, tpl, cooperative, closing);
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::poll::BLOCKED;
    use super::*;
    #[test]
    fn a_cached_epoch_is_never_used_after_the_map_changes() {
        let epochs = Epochs::default();
        let mut cache = None;
        epochs.update(|m| m.entry("t".into()).or_default().insert(0, 7));
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 0), Some(7));
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 0), Some(7));
        // A seek blocks the partition, then a new epoch: each is seen at once.
        epochs.update(|m| m.get_mut("t").unwrap().insert(0, BLOCKED));
        assert_eq!(
            EpochCache::epoch(&mut cache, &epochs, "t", 0),
            Some(BLOCKED)
        );
        epochs.update(|m| m.get_mut("t").unwrap().insert(0, 8));
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 0), Some(8));
        // Another partition or topic is looked up, not taken from the cache.
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 1), None);
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "u", 0), None);
        // Revoked: gone.
        epochs.update(|m| m.get_mut("t").unwrap().remove(&0));
        assert_eq!(EpochCache::epoch(&mut cache, &epochs, "t", 0), None);
    }
}
