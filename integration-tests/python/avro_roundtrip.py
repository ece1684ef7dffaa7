#!/usr/bin/env python3
"""Avro through a Millrace pipeline with Confluent's own Python client.

Driven by integration-tests/tests/avro.rs, in two steps:

  produce  Registers version 1 of a reading schema under <input>-value with
           SchemaRegistryClient, checks that version 2 (a field removed, one
           added with a default, int->long and float->double) is compatible
           and registers it, then produces records with AvroSerializer:
           readings dev-0..dev-<n-1>, even ones written with version 1, odd
           ones with version 2. Prints the ids the registry gave.
  consume  Reads the pipeline's Avro output (read_committed) with
           AvroDeserializer until <n> records arrived, and prints one JSON
           line per record: {"key", "schema_id", "value"}; then the id the
           registry holds for the output subject's latest version.

Everything the pipeline and registry do is checked by the Rust test; this
script only speaks the protocol the way the Confluent client does.
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, StringSerializer

READING_V1 = {
    "type": "record",
    "name": "Reading",
    "namespace": "org.millrace.it",
    "fields": [
        {"name": "device", "type": "string"},
        {"name": "hr", "type": "int"},
        {"name": "temp_c", "type": "float"},
        {"name": "firmware", "type": "string"},
    ],
}

READING_V2 = {
    "type": "record",
    "name": "Reading",
    "namespace": "org.millrace.it",
    "fields": [
        {"name": "device", "type": "string"},
        {"name": "hr", "type": "long"},
        {"name": "temp_c", "type": "double"},
        {"name": "ward", "type": "string", "default": "unknown"},
    ],
}


def reading(i, version):
    """Reading i as the producer writes it (temperatures are exact in float)."""
    value = {"device": f"dev-{i}", "hr": 60 + (i * 7) % 90, "temp_c": 36.0 + (i % 8) * 0.25}
    if version == 1:
        value["firmware"] = f"1.{i % 3}"
    else:
        value["ward"] = f"ward-{i % 4}"
    return value


def produce(args):
    registry = SchemaRegistryClient({"url": args.registry})
    subject = f"{args.input}-value"
    v1 = Schema(json.dumps(READING_V1), "AVRO")
    v2 = Schema(json.dumps(READING_V2), "AVRO")
    id1 = registry.register_schema(subject, v1)
    if not registry.test_compatibility(subject, v2):
        sys.exit("version 2 was judged incompatible")
    id2 = registry.register_schema(subject, v2)
    if registry.get_latest_version(subject).schema_id != id2:
        sys.exit("the latest version is not version 2")
    serializers = {
        1: AvroSerializer(registry, json.dumps(READING_V1), conf={"auto.register.schemas": False}),
        2: AvroSerializer(registry, json.dumps(READING_V2), conf={"auto.register.schemas": False}),
    }
    keys = StringSerializer()
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True})
    context = SerializationContext(args.input, MessageField.VALUE)
    for i in range(args.count):
        version = 1 if i % 2 == 0 else 2
        producer.produce(
            args.input,
            key=keys(f"dev-{i}"),
            value=serializers[version](reading(i, version), context),
        )
    if producer.flush(30) != 0:
        sys.exit("records were not delivered")
    print(json.dumps({"v1": id1, "v2": id2}))


def consume(args):
    registry = SchemaRegistryClient({"url": args.registry})
    deserializer = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"avro-roundtrip-{time.time_ns()}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.output])
    context = SerializationContext(args.output, MessageField.VALUE)
    seen = 0
    deadline = time.monotonic() + 120
    while seen < args.count:
        if time.monotonic() > deadline:
            sys.exit(f"only {seen} of {args.count} records arrived")
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            sys.exit(f"consumer error: {message.error()}")
        raw = message.value()
        value = deserializer(raw, context)
        print(
            json.dumps(
                {
                    "key": message.key().decode(),
                    "schema_id": int.from_bytes(raw[1:5], "big"),
                    "value": value,
                },
                sort_keys=True,
            )
        )
        seen += 1
    consumer.close()
    latest = registry.get_latest_version(f"{args.output}-value")
    print(json.dumps({"latest_id": latest.schema_id}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["produce", "consume"])
    parser.add_argument("--registry", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    if args.step == "produce":
        produce(args)
    else:
        consume(args)


if __name__ == "__main__":
    main()
