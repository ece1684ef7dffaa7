package dev.millrace.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The restart benchmark's pipeline in Kafka Streams: a table (a RocksDB store with its changelog,
 * like Millrace's {@code table:} source) joined by a stream on the record key, output {@code {"n":
 * value.n, "row": {"row": row.row}}} as Millrace's {@code project: [n, row.row]} writes it.
 * Options: {@code --stream}, {@code --table}, {@code --output}.
 */
final class JoinApp {
    static Topology topology(Args args) {
        StreamsBuilder builder = new StreamsBuilder();
        KTable<String, JsonNode> rows = builder.table(
                args.get("table"),
                Consumed.with(Serdes.String(), Json.serde()),
                Materialized.<String, JsonNode, KeyValueStore<Bytes, byte[]>>as("rows")
                        .withKeySerde(Serdes.String())
                        .withValueSerde(Json.serde()));
        builder.stream(args.get("stream"), Consumed.with(Serdes.String(), Json.serde()))
                .join(rows, (event, row) -> {
                    ObjectNode out = Json.MAPPER.createObjectNode();
                    out.set("n", event.path("n"));
                    out.putObject("row").set("row", row.path("row"));
                    return (JsonNode) out;
                })
                .to(args.get("output"), Produced.with(Serdes.String(), Json.serde()));
        return builder.build();
    }

    private JoinApp() {}
}
