"""Tests of `wallaroo.experimental` and its connector wire messages."""

import datetime
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import pytest

import wallaroo
import wallaroo.experimental as wx
from wallaroo.experimental import connector_wire_messages as cwm
from wallaroo.experimental import connectors
from quoll.ports import free_port

PYTHON_DIR = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "python"))


@wx.stream_message_decoder
def sdecode(bs):
    return bs.decode()


@wx.stream_message_encoder
def sencode(data):
    return data.encode()


@wx.octet_message_encoder
def oencode(data):
    return data


@wx.octet_message_decoder
def odecode(bs):
    return bs


def test_stream_message_decoder():
    assert isinstance(sdecode, wallaroo.ConnectorDecoder)
    assert sdecode.header_length() == 4
    assert sdecode.payload_length(b"\x00\x00\x00\x05") == 5
    assert sdecode.decode(b"hey") == "hey"
    assert sdecode.decoder()(b"x") == "x"
    t = type(sdecode)
    assert t._quoll_kind == "decoder"
    assert t._quoll_header_length == 4 and t._quoll_length_fmt == ">I"
    assert t._quoll_func(b"q") == "q"


def test_stream_message_encoder_legacy_record():
    out = sencode.encode("abc", 7, "kk")
    n, k = 3, 2
    assert out == struct.pack(">IqI2s3s", n + k + 16, 7, 2, b"kk", b"abc")
    assert sencode.encode("abc") == struct.pack(">IqI0s3s", 3 + 16, 0, 0,
                                                b"", b"abc")
    dt = datetime.datetime(1970, 1, 1, 0, 0, 1,
                           tzinfo=datetime.timezone.utc)
    assert struct.unpack(">q", sencode.encode("a", dt)[4:12])[0] == 1000
    t = type(sencode)
    assert t._quoll_kind == "encoder"
    # the fast path has exactly the semantics of encode(data)
    assert t._quoll_func("abc") == sencode.encode("abc")
    assert isinstance(sencode, wallaroo.ConnectorEncoder)


def test_octet_message_codecs():
    assert isinstance(oencode, wallaroo.OctetEncoder)
    assert oencode.encode(b"z") == b"z"
    assert isinstance(odecode, wallaroo.OctetDecoder)
    assert odecode.header_length() == 4
    assert odecode.payload_length(b"\x00\x00\x00\x02") == 2

    @wx.octet_message_decoder(header_length=2, length_fmt=">H")
    def d2(bs):
        return bs
    assert d2.header_length() == 2
    assert d2.payload_length(b"\x00\x09") == 9


def test_pickle_connector_codecs():
    for obj in (sdecode, sencode, oencode, odecode):
        assert type(pickle.loads(pickle.dumps(obj))) is type(obj)


def test_source_connector_config():
    c = wx.SourceConnectorConfig("src", encoder=oencode, decoder=sdecode,
                                 port=7100, cookie="cookie", max_credits=67,
                                 refill_credits=10)
    assert c.to_tuple() == ("source_connector", "src", "127.0.0.1", "7100",
                            oencode, sdecode, "cookie", 67, 10)
    c = wx.SourceConnectorConfig("src", oencode, sdecode, "7100", "c", 1, 0,
                                 host="0.0.0.0")
    assert c.to_tuple()[2:4] == ("0.0.0.0", "7100")


def test_sink_connector_config():
    c = wx.SinkConnectorConfig("snk", encoder=oencode, decoder=sdecode,
                               port=7200, cookie="c")
    assert c.to_tuple() == ("sink_connector", "snk", "127.0.0.1", "7200",
                            oencode, sdecode, "c")


def test_connector_configs_in_pipeline():
    src = wx.SourceConnectorConfig("src", oencode, sdecode, 1, "c", 5, 1)
    snk = wx.SinkConnectorConfig("snk", oencode, sdecode, 2, "c")
    p = wallaroo.source("p", src).to_sink(snk)
    app = wallaroo.build_application("a", p)
    assert app[2][0][0] == ("source", "p", src.to_tuple())
    assert app[2][0][1] == ("to_sink", snk.to_tuple())


def test_exceptions_and_source_connector():
    for exc in (wx.ConnectorError, wx.ProtocolError,
                wx.UnexpectedSocketError):
        assert issubclass(exc, Exception)
    with pytest.raises(Exception, match="AtLeastOnceSourceConnector.*quoll send --connector"):
        wx.SourceConnector()


def test_at_least_once_client_needs_its_hooks_and_names_an_unreachable_worker():
    # The three stream hooks are required, as in Wallaroo.
    with pytest.raises(TypeError, match="stream_acked"):
        wx.AtLeastOnceSourceConnector("0.0.1", "c", "p", "i", "127.0.0.1", 1)
    port = free_port()
    client = connectors.MultiSourceConnector("0.0.1", "c", "p", "i", "127.0.0.1", port)
    with pytest.raises(wx.ConnectorError, match=f"can't reach the worker at 127.0.0.1:{port}"):
        client.connect()


def test_parse_connector_args():
    args = ["x", "--application-module", "app", "--connector", "src",
            "--src-host", "h", "--src-port", "1", "--other", "z"]
    params = wx.parse_connector_args(args, ["host", "port"], ["extra"])
    assert (params.application, params.connector_name, params.host,
            params.port, params.extra) == ("app", "src", "h", "1", None)


def test_imports_without_asyncore():
    code = textwrap.dedent("""
        import sys
        sys.modules['asyncore'] = None   # make any import of them fail
        sys.modules['asynchat'] = None
        import wallaroo.experimental
        import wallaroo.experimental.connectors
        import wallaroo.experimental.connector_wire_messages
        print('ok')
    """)
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_harness_imports():
    from wallaroo.experimental.connectors import (BaseIter, BaseSource,  # noqa
                                                  MultiSourceConnector)
    assert connectors.stream_id_for(b"abc") == int(
        __import__("hashlib").sha256(b"abc").hexdigest()[:16], 16)


def test_framed_file_reader(tmp_path):
    path = tmp_path / "in.bin"
    recs = [b"one", b"", b"three"]
    path.write_bytes(b"".join(struct.pack(">I", len(r)) + r for r in recs))
    r = connectors.FramedFileReader(str(path))
    out = list(r)
    assert out == [(b"one", 7), (b"", 11), (b"three", 20)]
    r.reset(7)
    assert next(r) == (b"", 11)
    r.reset(connectors.U64_MAX)
    assert next(r) == (b"one", 7)
    r.close()


# --------------------------------------------------------------------------
# Wire messages: exact byte layouts (docs/formats.md, "Connector protocol v3")
# --------------------------------------------------------------------------

def short(b):
    return struct.pack(">H", len(b)) + b


LAYOUTS = [
    (cwm.Hello("0.0.1", "cookie", "prog", "inst"), 0,
     short(b"0.0.1") + short(b"cookie") + short(b"prog") + short(b"inst")),
    (cwm.Ok(67), 1, struct.pack(">I", 67)),
    (cwm.Error("Bad cookie"), 2, short(b"Bad cookie")),
    (cwm.Notify(9, b"stream-9", 123), 3,
     struct.pack(">Q", 9) + short(b"stream-9") + struct.pack(">Q", 123)),
    (cwm.NotifyAck(True, 9, 2 ** 64 - 1), 4,
     struct.pack(">BQQ", 1, 9, 2 ** 64 - 1)),
    (cwm.Message(1, 2, -3, b"key", b"payload"), 5,
     struct.pack(">QQq", 1, 2, -3) + short(b"key") + b"payload"),
    (cwm.Message(1, 2, 3, None, None), 5,
     struct.pack(">QQq", 1, 2, 3) + struct.pack(">H", 0)),
    (cwm.Ack(10, [(1, 2), (3, 4)]), 6,
     struct.pack(">II", 10, 2) + struct.pack(">QQQQ", 1, 2, 3, 4)),
    (cwm.Restart("127.0.0.1:5555"), 7,
     struct.pack(">I", 14) + b"127.0.0.1:5555"),
    (cwm.Restart(), 7, struct.pack(">I", 0)),
    (cwm.EosMessage(0x2a2b2c3d2a2b2c3d), 8, struct.pack(">Q",
                                                       0x2a2b2c3d2a2b2c3d)),
]


@pytest.mark.parametrize("msg,tag,body", LAYOUTS)
def test_frame_layouts(msg, tag, body):
    assert msg.encode() == body
    framed = cwm.Frame.encode(msg)
    assert framed == struct.pack(">IB", len(body) + 1, tag) + body
    assert cwm.Frame.read_header(framed) == len(body) + 1
    decoded = cwm.Frame.decode(framed[4:])
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert str(decoded) == str(msg)


def test_notify_accepts_str_name_and_decodes_bytes():
    m = cwm.Notify(1, "name", 0)
    d = cwm.Frame.decode(cwm.Frame.encode(m)[4:])
    assert d.stream_name == b"name"


def test_message_validation_and_empty_fields():
    with pytest.raises(TypeError):
        cwm.Message(1, 2, 3, "str key", None)
    with pytest.raises(TypeError):
        cwm.Message(1, 2, 3, None, "str payload")
    d = cwm.Message.decode(cwm.Message(1, 2, 3, b"", b"").encode())
    assert d.key is None and d.message is None


def test_truncated_and_unknown_frames():
    with pytest.raises(ValueError):
        cwm.Frame.decode(b"\x01\x00")
    with pytest.raises(ValueError):
        cwm.Frame.decode(b"\x63")
    with pytest.raises(ValueError):
        cwm.TwoPCFrame.decode(b"\x07")


TWO_PC = [
    (cwm.ListUncommitted(77), 201, struct.pack(">Q", 77)),
    (cwm.ReplyUncommitted(5, ["a:c_id=1", "b:c_id=2"]), 202,
     struct.pack(">QI", 5, 2) + short(b"a:c_id=1") + short(b"b:c_id=2")),
    (cwm.TwoPCPhase1("s:c_id=3", [(1, 0, 100), (2, 5, 6)]), 203,
     short(b"s:c_id=3") + struct.pack(">I", 2) +
     struct.pack(">QQQ", 1, 0, 100) + struct.pack(">QQQ", 2, 5, 6)),
    (cwm.TwoPCReply("s:c_id=3", True), 204, short(b"s:c_id=3") + b"\x01"),
    (cwm.TwoPCReply("s:c_id=3", False), 204, short(b"s:c_id=3") + b"\x00"),
    (cwm.TwoPCPhase2("t", True), 205, short(b"t") + b"\x01"),
    (cwm.WorkersLeft(9, ["w1", "w2"]), 206,
     struct.pack(">QI", 9, 2) + short(b"w1") + short(b"w2")),
]


@pytest.mark.parametrize("msg,tag,body", TWO_PC)
def test_two_pc_layouts(msg, tag, body):
    payload = cwm.TwoPCFrame.encode(msg)
    assert payload == bytes([tag]) + body
    decoded = cwm.TwoPCFrame.decode(payload)
    assert type(decoded) is type(msg)
    assert decoded == msg
    # carried inside a MESSAGE frame on stream 0
    frame = cwm.Frame.encode(cwm.Message(0, 0, 0, None, payload))
    inner = cwm.Frame.decode(frame[4:])
    assert cwm.TwoPCFrame.decode(inner.message) == msg


def test_two_pc_accepts_bytes_txn_ids():
    # aloc_sink passes bytes to TwoPCReply
    r = cwm.TwoPCReply("x:c_id=1".encode("utf-8"), True)
    assert cwm.TwoPCFrame.decode(cwm.TwoPCFrame.encode(r)) == \
        cwm.TwoPCReply("x:c_id=1", True)
    assert cwm.decode_phase2r(cwm.encode_phase2r(b"t", False)) == ("t", False)


def test_non_ascii_txn_ids_use_byte_lengths():
    m = cwm.ReplyUncommitted(1, ["é:c_id=1"])
    assert cwm.ReplyUncommitted.decode(m.encode()) == m
