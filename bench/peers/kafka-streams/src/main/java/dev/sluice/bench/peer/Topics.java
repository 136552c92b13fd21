package dev.sluice.bench.peer;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.GroupIdNotFoundException;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/** Topic administration shared by the application and the tool. */
final class Topics {
    private static final Logger LOG = LoggerFactory.getLogger(Topics.class);
    /** Every topic this project creates or deletes starts with it. */
    static final String PREFIX = "bench-peer-";

    private Topics() {
    }

    /** The topic's partitions, in order; empty when it does not exist. */
    static List<TopicPartition> partitions(Admin admin, String topic) throws InterruptedException, ExecutionException {
        try {
            TopicDescription description = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            List<TopicPartition> partitions = new ArrayList<>();
            description.partitions().forEach(info -> partitions.add(new TopicPartition(topic, info.partition())));
            return partitions;
        } catch (ExecutionException error) {
            if (error.getCause() instanceof UnknownTopicOrPartitionException) {
                return List.of();
            }
            throw error;
        }
    }

    /** Partitions of every topic named prefix...suffix. */
    static List<TopicPartition> partitionsOfPrefix(Admin admin, String prefix, String suffix)
            throws InterruptedException, ExecutionException {
        List<TopicPartition> result = new ArrayList<>();
        for (String topic : names(admin, prefix)) {
            if (topic.endsWith(suffix)) {
                result.addAll(partitions(admin, topic));
            }
        }
        return result;
    }

    static Set<String> names(Admin admin, String prefix) throws InterruptedException, ExecutionException {
        return admin.listTopics(new ListTopicsOptions().listInternal(false)).names().get().stream()
                .filter(name -> name.startsWith(prefix))
                .collect(Collectors.toSet());
    }

    /** Creates the topic with that many partitions, or checks the existing one has them. */
    static void ensure(Admin admin, String topic, int partitions) throws InterruptedException, ExecutionException {
        requirePrefix(topic);
        try {
            admin.createTopics(List.of(new NewTopic(topic, Optional.of(partitions), Optional.empty()))).all().get();
            LOG.info("created topic {} with {} partitions", topic, partitions);
        } catch (ExecutionException error) {
            if (!(error.getCause() instanceof TopicExistsException)) {
                throw error;
            }
            int existing = partitions(admin, topic).size();
            if (existing != partitions) {
                throw new IllegalStateException("topic " + topic + " exists with " + existing
                        + " partitions, not " + partitions + ": delete it (run.sh clean) and run again");
            }
        }
    }

    static void delete(Admin admin, Collection<String> topics) throws InterruptedException, ExecutionException {
        for (String topic : topics) {
            requirePrefix(topic);
        }
        if (topics.isEmpty()) {
            return;
        }
        try {
            admin.deleteTopics(topics).all().get();
        } catch (ExecutionException error) {
            if (!(error.getCause() instanceof UnknownTopicOrPartitionException)) {
                throw error;
            }
        }
        LOG.info("deleted topics {}", topics);
    }

    /** The application's repartition and changelog topics and its consumer group. */
    static void deleteInternal(Admin admin, String applicationId) {
        try {
            delete(admin, names(admin, applicationId + "-"));
            admin.deleteConsumerGroups(List.of(applicationId)).all().get();
        } catch (ExecutionException error) {
            if (!(error.getCause() instanceof GroupIdNotFoundException)) {
                LOG.warn("could not delete the internal topics or group of {}: {}", applicationId, error.getCause().toString());
            }
        } catch (InterruptedException error) {
            Thread.currentThread().interrupt();
        } catch (RuntimeException error) {
            LOG.warn("kept the internal topics of {}: {}", applicationId, error.getMessage());
        }
    }

    static void requirePrefix(String topic) {
        if (!topic.startsWith(PREFIX)) {
            throw new IllegalArgumentException("topic " + topic + " does not start with " + PREFIX
                    + ": this tool only creates and deletes its own topics");
        }
    }
}
