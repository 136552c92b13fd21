package dev.sluice.bench.peer;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.streams.KafkaStreams;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Decides when the run is over, from outside the stream threads, through the admin client:
 *
 * <ol>
 *   <li>the input's end offsets are captured before the application starts (the events to
 *       read);</li>
 *   <li>every 200 ms it reads the consumer group's committed offsets (under
 *       exactly_once_v2 an offset is committed in the same transaction as the results
 *       and dead letters of the records before it), the end offsets of the repartition
 *       topic and of the output topic;</li>
 *   <li>the run is complete once the committed input offsets have reached the captured
 *       end offsets, the repartition topic has been consumed (committed offset at its end,
 *       give or take the trailing transaction marker), and none of those numbers has moved
 *       for the quiet period. The completion time is the last time one of them moved
 *       (the quiet period itself is not counted).</li>
 * </ol>
 */
final class Progress {
    private static final Logger LOG = LoggerFactory.getLogger(Progress.class);
    private static final long POLL_MS = 200;

    private final Admin admin;
    private final PageViewsApp.Settings settings;
    private Map<TopicPartition, Long> inputEnd;
    private Map<TopicPartition, Long> inputBegin;
    private long events;

    static final class Outcome {
        long completedNanos;
        long completedCpuNanos;
        boolean internalCaughtUp;
        String error;
    }

    Progress(Admin admin, PageViewsApp.Settings settings) {
        this.admin = admin;
        this.settings = settings;
    }

    void captureInput() throws Exception {
        List<TopicPartition> partitions = Topics.partitions(admin, settings.input);
        if (partitions.isEmpty()) {
            throw new IllegalStateException("input topic " + settings.input + " does not exist: load it first (run.sh does)");
        }
        inputEnd = offsets(partitions, OffsetSpec.latest());
        inputBegin = offsets(partitions, OffsetSpec.earliest());
        events = 0;
        for (TopicPartition partition : partitions) {
            events += inputEnd.get(partition) - inputBegin.get(partition);
        }
    }

    int inputPartitions() {
        return inputEnd.size();
    }

    long events() {
        return events;
    }

    Outcome await(KafkaStreams streams, long startNanos) throws Exception {
        Outcome outcome = new Outcome();
        long deadline = startNanos + TimeUnit.SECONDS.toNanos(settings.timeoutSeconds);
        List<TopicPartition> internal = null;
        List<TopicPartition> outputs = Topics.partitions(admin, settings.output);
        Object previous = null;
        long lastChangeNanos = System.nanoTime();
        long lastChangeCpu = Report.processCpuNanos();
        long lastLogNanos = 0;
        boolean inputDoneLogged = false;
        while (true) {
            Thread.sleep(POLL_MS);
            long now = System.nanoTime();
            KafkaStreams.State state = streams.state();
            if (state == KafkaStreams.State.ERROR || state == KafkaStreams.State.NOT_RUNNING
                    || state == KafkaStreams.State.PENDING_ERROR) {
                outcome.error = "Kafka Streams stopped (state " + state + "): see the log above";
                return outcome;
            }
            if (now > deadline) {
                outcome.error = "not done after " + settings.timeoutSeconds + "s (--timeout-s): the committed offsets did not reach the input's end";
                return outcome;
            }
            if (internal == null && !settings.keyed) {
                List<TopicPartition> found = Topics.partitionsOfPrefix(admin, settings.applicationId + "-", "-repartition");
                internal = found.isEmpty() ? null : found;
            }
            Map<TopicPartition, Long> committed;
            Map<TopicPartition, Long> internalEnd;
            Map<TopicPartition, Long> outputEnd;
            try {
                committed = committed();
                internalEnd = internal == null ? Map.of() : offsets(internal, OffsetSpec.latest());
                outputEnd = offsets(outputs, OffsetSpec.latest());
            } catch (ExecutionException error) {
                // A slow or restarting broker: try again at the next poll (the deadline holds).
                LOG.debug("progress poll failed: {}", error.getCause().toString());
                continue;
            }
            Object snapshot = List.of(committed, internalEnd, outputEnd);
            if (!Objects.equals(snapshot, previous)) {
                previous = snapshot;
                lastChangeNanos = now;
                lastChangeCpu = Report.processCpuNanos();
            }
            long inputCommitted = 0;
            boolean inputDone = true;
            for (Map.Entry<TopicPartition, Long> end : inputEnd.entrySet()) {
                long begin = inputBegin.get(end.getKey());
                long offset = committed.getOrDefault(end.getKey(), begin);
                inputCommitted += Math.max(0, Math.min(offset, end.getValue()) - begin);
                if (offset < end.getValue()) {
                    inputDone = false;
                }
            }
            boolean internalDone = settings.keyed || internal != null;
            long internalLag = 0;
            for (Map.Entry<TopicPartition, Long> end : internalEnd.entrySet()) {
                long lag = end.getValue() - committed.getOrDefault(end.getKey(), 0L);
                internalLag += Math.max(lag, 0);
                // A transactional producer ends the topic with a commit marker, which a
                // consumer may or may not have committed past.
                if (lag > 1) {
                    internalDone = false;
                }
            }
            if (inputDone && !inputDoneLogged) {
                inputDoneLogged = true;
                LOG.info("input consumed and committed; waiting for the output to go quiet ({} ms)", settings.quietMs);
            }
            if (now - lastLogNanos > TimeUnit.SECONDS.toNanos(10)) {
                lastLogNanos = now;
                LOG.info("progress: {} of {} input events committed, repartition lag {}, {} results, {} dead letters, state {}",
                        inputCommitted, events, internalLag, PageViewsApp.RESULTS.sum(), DeadLetterHandler.total(), state);
            }
            if (inputDone && internalDone
                    && now - lastChangeNanos >= TimeUnit.MILLISECONDS.toNanos(settings.quietMs)) {
                outcome.completedNanos = lastChangeNanos;
                outcome.completedCpuNanos = lastChangeCpu;
                outcome.internalCaughtUp = internalDone;
                return outcome;
            }
        }
    }

    private Map<TopicPartition, Long> committed() throws InterruptedException, ExecutionException {
        Map<TopicPartition, OffsetAndMetadata> offsets = admin.listConsumerGroupOffsets(settings.applicationId)
                .partitionsToOffsetAndMetadata().get();
        Map<TopicPartition, Long> result = new HashMap<>();
        offsets.forEach((partition, offset) -> {
            if (offset != null) {
                result.put(partition, offset.offset());
            }
        });
        return result;
    }

    private Map<TopicPartition, Long> offsets(List<TopicPartition> partitions, OffsetSpec spec)
            throws InterruptedException, ExecutionException {
        if (partitions.isEmpty()) {
            return Map.of();
        }
        Map<TopicPartition, OffsetSpec> request = partitions.stream().collect(Collectors.toMap(p -> p, p -> spec));
        return admin.listOffsets(request, new ListOffsetsOptions(IsolationLevel.READ_UNCOMMITTED)).all().get()
                .entrySet().stream().collect(Collectors.toMap(Map.Entry::getKey, e -> e.getValue().offset()));
    }
}
