"""The protocol-level read_committed reader against tansu: it drops an
aborted transaction's records, which tansu's own read_committed consumers
are handed, and it stops at an open transaction."""

import time

import pytest

import committed_reader as cr

confluent_kafka = pytest.importorskip(
    "confluent_kafka", reason="the test client confluent-kafka is not installed "
    "(scripts/kafka-broker.sh installs it into .venv)")


def consume(broker, topic, isolation):
    c = confluent_kafka.Consumer({"bootstrap.servers": broker.address, "group.id": "t",
                                  "isolation.level": isolation,
                                  "enable.auto.commit": False})
    c.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            out.append(m.value())
    c.close()
    return out


def test_aborted_and_open_transactions(broker):
    broker.create_topic("out", 1)
    p = confluent_kafka.Producer({"bootstrap.servers": broker.address,
                                  "transactional.id": "reader-test"})
    p.init_transactions(10)
    p.begin_transaction()
    p.produce("out", b"c1", partition=0)
    p.commit_transaction(10)
    p.begin_transaction()
    p.produce("out", b"aborted", partition=0)
    p.flush(10)
    p.abort_transaction(10)
    p.begin_transaction()
    p.produce("out", b"c2", partition=0)
    p.commit_transaction(10)
    plain = confluent_kafka.Producer({"bootstrap.servers": broker.address})
    plain.produce("out", b"plain", partition=0)
    plain.flush(10)

    # tansu's defect: a read_committed consumer gets the aborted record.
    assert consume(broker, "out", "read_committed") == [b"c1", b"aborted", b"c2", b"plain"]
    values = [r.value for r in cr.read_committed(broker.address, "out")]
    assert values == [b"c1", b"c2", b"plain"]
    assert [r.value for r in cr.read_uncommitted(broker.address, "out")] == \
        [b"c1", b"aborted", b"c2", b"plain"]
    # Markers take offsets on tansu: the records are not at 0, 1, 2.
    offsets = [r.offset for r in cr.read_committed(broker.address, "out")]
    assert offsets == sorted(offsets) and offsets[0] == 0 and offsets[-1] > 3

    # An open transaction hides itself and everything after it.
    p.begin_transaction()
    p.produce("out", b"open", partition=0)
    p.flush(10)
    plain.produce("out", b"after", partition=0)
    plain.flush(10)
    assert [r.value for r in cr.read_committed(broker.address, "out")] == [b"c1", b"c2", b"plain"]
    p.commit_transaction(10)
    assert [r.value for r in cr.read_committed(broker.address, "out")] == \
        [b"c1", b"c2", b"plain", b"open", b"after"]


def test_command_line(broker, capsys):
    broker.create_topic("t", 2)
    p = confluent_kafka.Producer({"bootstrap.servers": broker.address})
    p.produce("t", b"v", key=b"k", partition=1)
    p.flush(10)
    assert cr.main(["--broker", broker.address, "--topic", "t"]) == 0
    assert capsys.readouterr().out.strip() == \
        '{"partition": 1, "offset": 0, "key": "k", "value": "v"}'
    assert cr.main(["--broker", broker.address, "--topic", "missing"]) == 1
    assert "missing" in capsys.readouterr().err


def batch(offset, pid, epoch, control=None, value=b"v"):
    b = cr.Batch(0, offset, offset, pid, epoch, True, control)
    if control is None:
        b.records.append(cr.Record(0, offset, None, value))
    return b


def test_a_marker_settles_only_its_own_producer_epoch():
    # Epoch 0's transaction was left open by a killed producer; its
    # successor (epoch 1) committed. Kafka aborts epoch 0's transaction
    # when epoch 1 starts, and refuses epoch 0's later writes (a zombie
    # still sending): neither is committed output.
    batches = [batch(0, 7, 0, value=b"open-of-dead"), batch(1, 7, 1, value=b"new"),
               batch(2, 7, 0, value=b"zombie"), batch(3, 7, 1, cr.CONTROL_COMMIT),
               batch(4, 9, 0, value=b"other"), batch(5, 9, 0, cr.CONTROL_COMMIT)]
    assert [r.value for r in cr.committed(batches)] == [b"new", b"other"]
    assert cr._settle(batches)[2] == [2]


def test_a_fenced_transaction_is_not_committed_by_its_successor(broker):
    broker.create_topic("out", 1)
    conf = {"bootstrap.servers": broker.address, "transactional.id": "fenced-test"}
    old = confluent_kafka.Producer(conf)
    old.init_transactions(10)
    old.begin_transaction()
    old.produce("out", b"of-the-dead", partition=0)
    old.flush(10)
    new = confluent_kafka.Producer(conf)
    new.init_transactions(10)
    new.begin_transaction()
    new.produce("out", b"resent", partition=0)
    new.commit_transaction(10)
    assert [r.value for r in cr.read_committed(broker.address, "out")] == [b"resent"]
    assert cr.fenced_batches(broker.address, "out") == []
