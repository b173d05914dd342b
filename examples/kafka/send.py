"""Sends lines of text as records to a Kafka topic (for the examples here).

    python3 examples/kafka/send.py --broker 127.0.0.1:9092 --topic lines < input.txt

Needs the `confluent-kafka` client (`scripts/kafka-broker.sh` installs it
into .venv).
"""

import argparse
import sys

from confluent_kafka import Producer


def main() -> int:
    parser = argparse.ArgumentParser(description="Send stdin's lines to a Kafka topic.")
    parser.add_argument("--broker", required=True, help="host:port")
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()
    producer = Producer({"bootstrap.servers": args.broker})
    sent = 0
    for line in sys.stdin:
        producer.produce(args.topic, line.rstrip("\n").encode("utf-8"))
        producer.poll(0)
        sent += 1
    left = producer.flush(30)
    if left:
        print(f"send: {left} of {sent} records not delivered", file=sys.stderr)
        return 1
    print(f"send: {sent} records to {args.topic} at {args.broker}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
