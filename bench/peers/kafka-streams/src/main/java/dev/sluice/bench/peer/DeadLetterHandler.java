package dev.sluice.bench.peer;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.LongAdder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.DeserializationExceptionHandler;
import org.apache.kafka.streams.errors.ErrorHandlerContext;
import org.apache.kafka.streams.errors.ProcessingExceptionHandler;
import org.apache.kafka.streams.processor.api.Record;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Routes broken records to the dead-letter topic ({@code errors.dead.letter.queue.topic.name},
 * Kafka Streams 4.x's dead-letter queue, KIP-1034) and lets the application go on: the
 * original key and value, untouched, with the original headers plus {@code sluice-reason}
 * (Sluice's reason names) and {@code sluice-detail}. Under exactly_once_v2 these records are
 * part of the task's transaction, like the results.
 *
 * <p>Only {@link DeadLetter}s are routed: any other exception is a bug and stops the
 * application (Response.fail), so a broken peer cannot look fast by dropping everything.
 */
public final class DeadLetterHandler implements DeserializationExceptionHandler, ProcessingExceptionHandler {
    private static final Logger LOG = LoggerFactory.getLogger(DeadLetterHandler.class);
    private static final int LOGGED = 5;

    /** Dead letters per reason, for the report. */
    static final Map<String, LongAdder> COUNTS = new ConcurrentHashMap<>();
    private static final LongAdder SEEN = new LongAdder();

    private String topic;

    @Override
    public void configure(Map<String, ?> configs) {
        Object name = configs.get(StreamsConfig.ERRORS_DEAD_LETTER_QUEUE_TOPIC_NAME_CONFIG);
        if (name == null || name.toString().isEmpty()) {
            throw new IllegalArgumentException(StreamsConfig.ERRORS_DEAD_LETTER_QUEUE_TOPIC_NAME_CONFIG + " is not set");
        }
        topic = name.toString();
    }

    @Override
    public DeserializationExceptionHandler.Response handleError(ErrorHandlerContext context,
                                                                ConsumerRecord<byte[], byte[]> record,
                                                                Exception exception) {
        if (!(exception instanceof DeadLetter)) {
            LOG.error("deserialization failed on {}-{}@{}: not a dead letter, stopping",
                    context.topic(), context.partition(), context.offset(), exception);
            return DeserializationExceptionHandler.Response.fail();
        }
        return DeserializationExceptionHandler.Response.resume(
                List.of(deadLetter((DeadLetter) exception, context, record.key(), record.value(),
                        record.timestamp(), record.headers())));
    }

    @Override
    public ProcessingExceptionHandler.Response handleError(ErrorHandlerContext context,
                                                           Record<?, ?> record,
                                                           Exception exception) {
        if (!(exception instanceof DeadLetter)) {
            LOG.error("processing failed on {}-{}@{} in {}: not a dead letter, stopping",
                    context.topic(), context.partition(), context.offset(), context.processorNodeId(), exception);
            return ProcessingExceptionHandler.Response.fail();
        }
        return ProcessingExceptionHandler.Response.resume(
                List.of(deadLetter((DeadLetter) exception, context, context.sourceRawKey(),
                        context.sourceRawValue(), record.timestamp(), context.headers())));
    }

    private ProducerRecord<byte[], byte[]> deadLetter(DeadLetter letter, ErrorHandlerContext context,
                                                      byte[] key, byte[] value, long timestamp,
                                                      Headers original) {
        COUNTS.computeIfAbsent(letter.reason(), reason -> new LongAdder()).increment();
        SEEN.increment();
        if (SEEN.sum() <= LOGGED) {
            LOG.info("dead letter {}-{}@{}: {}: {}{}", context.topic(), context.partition(), context.offset(),
                    letter.reason(), letter.getMessage(), SEEN.sum() == LOGGED ? " (no more are logged)" : "");
        }
        Headers headers = new RecordHeaders(original == null ? null : original.toArray());
        headers.add("sluice-reason", letter.reason().getBytes(StandardCharsets.UTF_8));
        headers.add("sluice-detail", String.valueOf(letter.getMessage()).getBytes(StandardCharsets.UTF_8));
        return new ProducerRecord<>(topic, null, timestamp >= 0 ? timestamp : null, key, value, headers);
    }

    static long total() {
        return COUNTS.values().stream().mapToLong(LongAdder::sum).sum();
    }
}
