package dev.sluice.bench.peer;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.atomic.LongAdder;
import java.util.stream.Stream;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.EmitStrategy;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KGroupedStream;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.WindowStore;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Sluice's page-views job (examples/page-views/streamjob.yaml) as a Kafka Streams
 * application: keep status == 200, key by url, tumbling 1-minute event-time windows with
 * 35s of grace, count and average latencyMs, emit each window's final result when it
 * closes. It measures itself: once its committed offsets reach the input's end offsets
 * (captured at start) and nothing it tracks has moved for a quiet period, it prints one
 * JSON line on stdout and exits. See README.md for the options and the semantics.
 */
public final class PageViewsApp {
    private static final Logger LOG = LoggerFactory.getLogger(PageViewsApp.class);

    static final Duration WINDOW = Duration.ofMinutes(1);
    /** maxOutOfOrderness 5s + allowedLateness 30s: see README.md. */
    static final Duration GRACE = Duration.ofSeconds(35);
    static final String STORE = "page-views-per-minute";
    static final String REPARTITION = "by-url";

    static final LongAdder RESULTS = new LongAdder();
    /** Wall-clock nanoseconds of the latest aggregate update. */
    static volatile long lastAggregateNanos;

    /** Event time from the decoded value (dead letters never get here). */
    public static final class EventTime implements TimestampExtractor {
        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            Object value = record.value();
            return value instanceof PageView ? ((PageView) value).timestamp : record.timestamp();
        }
    }

    /** The topology; {@code keyed}: the input's record key is already the url. */
    static Topology topology(String input, String output, boolean keyed) {
        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, PageView> views = builder.stream(input,
                Consumed.with(Serdes.String(), Codecs.pageViews())
                        .withTimestampExtractor(new EventTime())
                        .withName("page-views"));
        // filter: event.status == 200 (a missing status fails the filter, as in Sluice)
        KStream<String, PageView> ok = views.filter((key, view) -> {
            if (view.statusMissing) {
                throw new DeadLetter(DeadLetter.FILTER_ERROR, "filter: no such key: status");
            }
            return view.ok;
        }, Named.as("status-200"));
        Grouped<String, Latency> grouped = Grouped.with(REPARTITION, Serdes.String(), Codecs.latencies());
        KGroupedStream<String, Latency> byUrl;
        if (keyed) {
            // partitioning: ByKey. The producer keyed each record by its url: no repartition.
            byUrl = ok.mapValues(view -> {
                view.requireUrl();
                return view.requireLatency();
            }, Named.as("latency")).groupByKey(grouped);
        } else {
            // partitioning: Any. selectKey marks the stream for repartitioning: groupByKey
            // writes it to <application.id>-by-url-repartition, keyed by url.
            byUrl = ok.selectKey((key, view) -> view.requireUrl(), Named.as("key-by-url"))
                    .mapValues(PageView::requireLatency, Named.as("latency"))
                    .groupByKey(grouped);
        }
        byUrl.windowedBy(TimeWindows.ofSizeAndGrace(WINDOW, GRACE))
                .emitStrategy(EmitStrategy.onWindowClose())
                .aggregate(WindowAggregate::new,
                        (url, latency, aggregate) -> {
                            lastAggregateNanos = System.nanoTime();
                            return aggregate.add(latency);
                        },
                        Named.as("views-and-latency"),
                        Materialized.<String, WindowAggregate, WindowStore<Bytes, byte[]>>as(STORE)
                                .withKeySerde(Serdes.String())
                                .withValueSerde(Codecs.windowAggregates()))
                .toStream(Named.as("closed-windows"))
                .map((window, aggregate) -> {
                    RESULTS.increment();
                    return KeyValue.pair(window.key(), Output.result(window, aggregate));
                }, Named.as("result-json"))
                .to(output, Produced.with(Serdes.String(), Serdes.String()).withName("results"));
        return builder.build();
    }

    public static void main(String[] arguments) throws Exception {
        Args args;
        Settings settings;
        try {
            args = new Args(arguments, Set.of("keep", "print-topology"));
            settings = new Settings(args);
            args.done();
        } catch (IllegalArgumentException error) {
            System.err.println("page-views app: " + error.getMessage());
            System.err.println(USAGE);
            System.exit(64);
            return;
        }
        System.exit(run(settings));
    }

    static final String USAGE = String.join("\n",
            "usage: PageViewsApp --input-topic T --output-topic T --dead-letter-topic T [options]",
            "  --bootstrap HOST:PORT         broker (default $SLUICE_KAFKA_BOOTSTRAP or 127.0.0.1:9092)",
            "  --variant repartition|keyed   repartition: selectKey(url) + groupByKey (input not keyed);",
            "                                keyed: groupByKey on the producer's key (default repartition)",
            "  --commit-interval-ms MS       commit.interval.ms (default 10000, Sluice's checkpointInterval)",
            "  --threads N                   num.stream.threads (default 1)",
            "  --application-id ID           default bench-peer-ks-<epoch ms>",
            "  --state-dir DIR               default: a new temporary directory, removed at exit",
            "  --quiet-ms MS                 how long nothing may move before the run counts as done",
            "                                (default 2 x commit interval + 2000)",
            "  --timeout-s S                 give up after S seconds (default 3600)",
            "  --config KEY=VALUE            any other Kafka Streams / client property (repeatable)",
            "  --keep                        keep the internal topics, consumer group and state dir",
            "  --print-topology              print the topology description on stderr");

    /** The command line, checked. */
    static final class Settings {
        final String bootstrap;
        final String input;
        final String output;
        final String deadLetters;
        final boolean keyed;
        final long commitIntervalMs;
        final int threads;
        final String applicationId;
        final String stateDir;
        final long quietMs;
        final long timeoutSeconds;
        final Map<String, String> extra = new LinkedHashMap<>();
        final boolean keep;
        final boolean printTopology;

        Settings(Args args) {
            bootstrap = args.string("bootstrap", Args.defaultBootstrap());
            input = args.required("input-topic");
            output = args.required("output-topic");
            deadLetters = args.required("dead-letter-topic");
            String variant = args.string("variant", "repartition");
            if (!variant.equals("repartition") && !variant.equals("keyed")) {
                throw new IllegalArgumentException("--variant must be repartition or keyed, not " + variant);
            }
            keyed = variant.equals("keyed");
            commitIntervalMs = args.number("commit-interval-ms", 10_000);
            threads = (int) args.number("threads", 1);
            applicationId = args.string("application-id", "bench-peer-ks-" + System.currentTimeMillis());
            stateDir = args.string("state-dir", null);
            quietMs = args.number("quiet-ms", 2 * commitIntervalMs + 2000);
            timeoutSeconds = args.number("timeout-s", 3600);
            for (String pair : args.all("config")) {
                int equals = pair.indexOf('=');
                if (equals <= 0) {
                    throw new IllegalArgumentException("--config wants KEY=VALUE, not " + pair);
                }
                extra.put(pair.substring(0, equals), pair.substring(equals + 1));
            }
            keep = args.flag("keep");
            printTopology = args.flag("print-topology");
            if (commitIntervalMs <= 0 || threads <= 0 || quietMs <= 0) {
                throw new IllegalArgumentException("--commit-interval-ms, --threads and --quiet-ms must be positive");
            }
        }
    }

    static Properties streamsProperties(Settings settings, Path stateDir) {
        Properties properties = new Properties();
        properties.put(StreamsConfig.APPLICATION_ID_CONFIG, settings.applicationId);
        properties.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, settings.bootstrap);
        properties.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        properties.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.toString(settings.commitIntervalMs));
        properties.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.toString(settings.threads));
        properties.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        properties.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG, DeadLetterHandler.class.getName());
        properties.put(StreamsConfig.PROCESSING_EXCEPTION_HANDLER_CLASS_CONFIG, DeadLetterHandler.class.getName());
        properties.put(StreamsConfig.ERRORS_DEAD_LETTER_QUEUE_TOPIC_NAME_CONFIG, settings.deadLetters);
        properties.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        // Under exactly_once_v2 Kafka Streams sets transaction.timeout.ms to 10 s: a commit
        // interval of 10 s (Sluice's checkpointInterval) keeps transactions open longer than
        // that, the coordinator aborts them, fences the producer, and the tasks restart and
        // reprocess. A transaction must outlive its commit interval.
        properties.put(StreamsConfig.producerPrefix(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG),
                Long.toString(Math.max(60_000L, 3 * settings.commitIntervalMs)));
        properties.putAll(settings.extra);
        return properties;
    }

    static int run(Settings settings) throws Exception {
        long startNanos = System.nanoTime();
        boolean temporaryStateDir = settings.stateDir == null;
        Path stateDir = temporaryStateDir
                ? Files.createTempDirectory("bench-peer-ks-state-")
                : Path.of(settings.stateDir);
        Properties adminProperties = new Properties();
        adminProperties.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, settings.bootstrap);
        for (Map.Entry<String, String> entry : settings.extra.entrySet()) {
            if (entry.getKey().startsWith("security.") || entry.getKey().startsWith("sasl.") || entry.getKey().startsWith("ssl.")) {
                adminProperties.put(entry.getKey(), entry.getValue());
            }
        }
        try (Admin admin = Admin.create(adminProperties)) {
            Progress progress = new Progress(admin, settings);
            progress.captureInput();
            int partitions = progress.inputPartitions();
            Topics.ensure(admin, settings.output, partitions);
            Topics.ensure(admin, settings.deadLetters, partitions);

            Topology topology = topology(settings.input, settings.output, settings.keyed);
            if (settings.printTopology) {
                System.err.println(topology.describe());
            }
            KafkaStreams streams = new KafkaStreams(topology, streamsProperties(settings, stateDir));
            Runtime.getRuntime().addShutdownHook(new Thread(() -> streams.close(Duration.ofSeconds(30)), "close-on-signal"));
            LOG.info("application.id {}: {} events in {} ({} partitions), variant {}, {} thread(s), commit.interval.ms {}",
                    settings.applicationId, progress.events(), settings.input, partitions,
                    settings.keyed ? "keyed" : "repartition", settings.threads, settings.commitIntervalMs);
            streams.start();

            Progress.Outcome outcome = progress.await(streams, startNanos);
            int code = 0;
            if (outcome.error != null) {
                System.err.println("page-views app: " + outcome.error);
                code = 1;
            } else {
                System.out.println(report(settings, progress, outcome, streams, startNanos, partitions));
                System.out.flush();
            }
            // Leave the group, so that it is empty and can be deleted now (Kafka Streams
            // otherwise stays a member until the session times out).
            streams.close(CloseOptions.groupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP)
                    .withTimeout(Duration.ofSeconds(60)));
            if (!settings.keep) {
                streams.cleanUp();
                Topics.deleteInternal(admin, settings.applicationId);
                if (temporaryStateDir) {
                    deleteTree(stateDir);
                }
            }
            return code;
        }
    }

    static String report(Settings settings, Progress progress, Progress.Outcome outcome, KafkaStreams streams,
                         long startNanos, int partitions) {
        long events = progress.events();
        long first = Codecs.FIRST_RECORD_NANOS.get();
        double seconds = first == 0 ? 0 : (outcome.completedNanos - first) / 1e9;
        double cpuSeconds = first == 0 ? 0 : (outcome.completedCpuNanos - Codecs.firstRecordCpuNanos) / 1e9;
        long lastProcessed = Math.max(Codecs.lastInputNanos, lastAggregateNanos);
        double processedSeconds = first == 0 ? 0 : (lastProcessed - first) / 1e9;
        Map<String, Long> byReason = new TreeMap<>();
        DeadLetterHandler.COUNTS.forEach((reason, count) -> byReason.put(reason, count.sum()));
        return new Report.Json()
                .field("engine", "kafka-streams")
                .field("kafkaStreamsVersion", kafkaVersion())
                .field("variant", settings.keyed ? "keyed" : "repartition")
                .field("inputTopic", settings.input)
                .field("partitions", partitions)
                .field("threads", settings.threads)
                .field("commitIntervalMs", settings.commitIntervalMs)
                .field("events", events)
                .field("seconds", seconds)
                .field("eventsPerSecond", seconds > 0 ? events / seconds : 0.0)
                .field("cpuSeconds", cpuSeconds)
                .field("eventsPerCpuSecond", cpuSeconds > 0 ? events / cpuSeconds : 0.0)
                .field("coresUsed", seconds > 0 ? cpuSeconds / seconds : 0.0)
                .field("processedSeconds", processedSeconds)
                .field("startupSeconds", first == 0 ? 0.0 : (first - startNanos) / 1e9)
                .field("totalCpuSeconds", Report.processCpuNanos() / 1e9)
                .field("peakRssMiB", Report.peakRssMiB())
                .field("results", RESULTS.sum())
                .field("deadLetters", DeadLetterHandler.total())
                .field("deadLettersByReason", byReason)
                // Kafka Streams' dropped-records counts the late events and the dead letters.
                .field("lateDropped", (long) metricSum(streams, "dropped-records-total") - DeadLetterHandler.total())
                .field("repartitionCaughtUp", settings.keyed ? null : outcome.internalCaughtUp)
                .toString();
    }

    /** The kafka-clients version on the classpath (its kafka/kafka-version.properties). */
    static String kafkaVersion() {
        Properties properties = new Properties();
        try (var in = KafkaStreams.class.getClassLoader().getResourceAsStream("kafka/kafka-version.properties")) {
            if (in != null) {
                properties.load(in);
            }
        } catch (IOException error) {
            return "unknown";
        }
        return properties.getProperty("version", "unknown");
    }

    static double metricSum(KafkaStreams streams, String name) {
        double sum = 0;
        for (Map.Entry<MetricName, ? extends Metric> entry : streams.metrics().entrySet()) {
            if (entry.getKey().name().equals(name) && entry.getKey().group().equals("stream-task-metrics")) {
                Object value = entry.getValue().metricValue();
                if (value instanceof Number) {
                    sum += ((Number) value).doubleValue();
                }
            }
        }
        return sum;
    }

    static void deleteTree(Path root) {
        try (Stream<Path> paths = Files.walk(root)) {
            paths.sorted(Comparator.reverseOrder()).forEach(path -> path.toFile().delete());
        } catch (IOException error) {
            LOG.warn("could not remove {}: {}", root, error.toString());
        }
    }
}
