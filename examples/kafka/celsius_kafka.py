"""Celsius to Fahrenheit, Kafka in and Kafka out.

Each record of the input topic holds a temperature in Celsius as text
(`"21.5"`); the app writes the Fahrenheit value, as text with two decimals,
to the output topic. Records that are not numbers are dropped.

The topics and brokers come from Wallaroo's Kafka flags
(`kafka_parse_source_options`/`kafka_parse_sink_options`):

    quoll run examples/kafka/celsius_kafka.py \\
        --kafka_source_topic celsius --kafka_source_brokers 127.0.0.1:9092 \\
        --kafka_sink_topic fahrenheit --kafka_sink_brokers 127.0.0.1:9092 \\
        --kafka_sink_max_message_size 100000 --kafka_sink_max_produce_buffer_ms 10

See README.md beside this file for a broker and test input.
"""

import wallaroo


def application_setup(args):
    source = wallaroo.CustomKafkaSourceCLIParser(args, decode_celsius)
    sink = wallaroo.CustomKafkaSinkCLIParser(args, encode_fahrenheit)
    pipeline = (wallaroo.source("Celsius Conversion", source)
                .to(multiply)
                .to(add)
                .to_sink(sink))
    return wallaroo.build_application("Celsius to Fahrenheit with Kafka",
                                      pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_celsius(value):
    # Kafka values come whole: the header settings are not used.
    try:
        return float(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


@wallaroo.computation(name="multiply by 1.8")
def multiply(celsius):
    return celsius * 1.8


@wallaroo.computation(name="add 32")
def add(value):
    return value + 32


@wallaroo.encoder
def encode_fahrenheit(fahrenheit):
    # A bare payload: no key, librdkafka picks the partition.
    return "{:.2f}".format(fahrenheit)
