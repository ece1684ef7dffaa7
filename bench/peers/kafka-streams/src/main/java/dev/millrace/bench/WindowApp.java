package dev.millrace.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.ByteBuffer;
import java.time.Duration;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.WindowStore;

/**
 * Millrace's benchmark pipeline in Kafka Streams: per record key, a tumbling 10 s window on the
 * event time {@code value.t} with count/sum/min/max/mean of {@code value.hr}, final results only.
 *
 * <p>Closing rule. Millrace keeps per task (input partition) a watermark = max event time seen −
 * lateness, and closes {@code [start, end)} once the watermark reaches {@code end + grace}; a record
 * whose windows are all closed by the watermark before it is late. Kafka Streams keeps per task a
 * stream time = max record timestamp seen, drops a record when {@code end <= streamTime − G} and
 * (with {@code suppress(untilWindowCloses)}) emits a window once {@code end <= streamTime − G}. With
 * the event time as the record timestamp and {@code G = lateness + grace}, both close the same
 * windows on the same records and drop the same records. Options: {@code --input}, {@code
 * --output}, {@code --size-ms} (10000), {@code --grace-ms} (Millrace's lateness + grace, 1000).
 */
final class WindowApp {
    static Topology topology(Args args) {
        Duration size = Duration.ofMillis(args.getLong("size-ms", 10_000));
        Duration grace = Duration.ofMillis(args.getLong("grace-ms", 1_000));
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(
                        args.get("input"),
                        Consumed.with(Serdes.String(), Json.serde())
                                .withTimestampExtractor(new EventTime()))
                .groupByKey()
                .windowedBy(TimeWindows.ofSizeAndGrace(size, grace))
                .aggregate(
                        Agg::new,
                        (key, value, agg) -> agg.add(value.path("hr").asDouble()),
                        Materialized.<String, Agg, WindowStore<Bytes, byte[]>>as("window")
                                .withKeySerde(Serdes.String())
                                .withValueSerde(new AggSerde()))
                .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
                .toStream()
                .map((w, agg) -> KeyValue.pair(
                        w.key(), agg.render(w.key(), w.window().start(), w.window().end())))
                .to(args.get("output"), Produced.with(Serdes.String(), Serdes.ByteArray()));
        return builder.build();
    }

    /** The event time {@code t} of a JSON reading; records without one are dropped (−1). */
    static final class EventTime implements TimestampExtractor {
        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            if (record.value() instanceof JsonNode node && node.path("t").canConvertToLong()) {
                return node.path("t").asLong();
            }
            return -1;
        }
    }

    /** The running aggregates of one window, as Millrace's {@code Acc}. */
    static final class Agg {
        long count;
        double sum;
        double min = Double.POSITIVE_INFINITY;
        double max = Double.NEGATIVE_INFINITY;

        Agg add(double v) {
            count++;
            sum += v;
            min = Math.min(min, v);
            max = Math.max(max, v);
            return this;
        }

        byte[] render(String key, long start, long end) {
            ObjectNode out = Json.MAPPER.createObjectNode();
            out.put("key", key);
            out.put("start", start);
            out.put("end", end);
            out.put("count", count);
            out.put("sum", sum);
            out.put("min", min);
            out.put("max", max);
            out.put("mean", sum / count);
            try {
                return Json.MAPPER.writeValueAsBytes(out);
            } catch (java.io.IOException e) {
                throw new IllegalStateException(e);
            }
        }
    }

    /** Fixed 32-byte encoding of {@link Agg}. */
    static final class AggSerde implements Serde<Agg> {
        @Override
        public org.apache.kafka.common.serialization.Serializer<Agg> serializer() {
            return (topic, agg) -> agg == null
                    ? null
                    : ByteBuffer.allocate(32)
                            .putLong(agg.count)
                            .putDouble(agg.sum)
                            .putDouble(agg.min)
                            .putDouble(agg.max)
                            .array();
        }

        @Override
        public org.apache.kafka.common.serialization.Deserializer<Agg> deserializer() {
            return (topic, bytes) -> {
                if (bytes == null) {
                    return null;
                }
                ByteBuffer b = ByteBuffer.wrap(bytes);
                Agg agg = new Agg();
                agg.count = b.getLong();
                agg.sum = b.getDouble();
                agg.min = b.getDouble();
                agg.max = b.getDouble();
                return agg;
            };
        }
    }

    private WindowApp() {}
}
