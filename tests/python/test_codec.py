"""Properties of the worker codec (docs/formats.md, "The codec blob";
docs/wallaroo-compat.md, "Serialization"), through
`quoll._engine.codec_encode` / `codec_decode`.

- Plain values (None, bool, int, float, str, bytes and tuples/lists/dicts
  of them) round-trip to an equal value of exactly the same type all the
  way down, float bit patterns (NaN payloads, -0.0) and dict order included.
- The blob's first byte is the codec tag: `Q` (fast codec) for the values
  codec.rs documents as plain (ints within i64, strs that have a UTF-8 form,
  nesting up to MAX_DEPTH), `P` (pickle) for everything else, which also
  round-trips exactly: subclasses of built-ins keep their type.
- With the app's pair, the blob is `U` + exactly what serialize returned,
  and deserialize gets exactly those bytes; wrong types are refused with an
  error naming them.
- Corrupt fast blobs raise ValueError, never crash or allocate wildly.
"""

import collections
import math
import pickle
import struct
import threading
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quoll._engine import codec_decode, codec_encode

MAX_DEPTH = 32  # codec.rs: deeper nesting goes to pickle
I64 = (-(2 ** 63), 2 ** 63 - 1)


# ---------------------------------------------------------------- helpers

def same(a, b):
    """Equal, NaN-aware and bit-exact for floats, with identical types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    return a == b


def fast_plain(v, depth=0):
    """Whether codec.rs's fast encoding takes `v` (its documented rules)."""
    if depth > MAX_DEPTH:
        return False
    t = type(v)
    if v is None or t in (bool, float, bytes):
        return True
    if t is int:
        return I64[0] <= v <= I64[1]
    if t is str:
        try:
            v.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False
    if t in (tuple, list):
        return all(fast_plain(x, depth + 1) for x in v)
    if t is dict:
        return all(fast_plain(k, depth + 1) and fast_plain(x, depth + 1) for k, x in v.items())
    return False


def roundtrip(v):
    blob = codec_encode(v)
    assert isinstance(blob, bytes)
    return blob, codec_decode(blob)


# ---------------------------------------------------------------- strategies

big_ints = st.one_of(st.integers(), st.integers(min_value=2 ** 63 - 3, max_value=2 ** 63 + 3),
                     st.integers(min_value=-(2 ** 63) - 3, max_value=-(2 ** 63) + 3),
                     st.integers(min_value=2 ** 64, max_value=2 ** 200).flatmap(lambda n: st.sampled_from([n, -n])))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan,
                                    struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0],  # NaN payload
                                    5e-324, 1.7976931348623157e308]))
texts = st.one_of(st.text(), st.text(alphabet=st.characters(exclude_categories=())))  # with lone surrogates
scalars = st.one_of(st.none(), st.booleans(), big_ints, floats, texts, st.binary())
hashables = st.recursive(st.one_of(st.none(), st.booleans(), big_ints, floats, texts, st.binary()),
                         lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=3).map(tuple),
                         max_leaves=6)
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.lists(inner, max_size=5).map(tuple),
                            st.dictionaries(hashables, inner, max_size=5)),
    max_leaves=30)


# ---------------------------------------------------------------- plain values

@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(plain)
def test_plain_values_roundtrip_with_identical_types(v):
    blob, back = roundtrip(v)
    assert same(back, v), (v, back)
    assert blob[:1] == (b"Q" if fast_plain(v) else b"P"), (v, blob[:1])


@given(st.one_of(st.none(), st.booleans(), st.integers(*I64), st.floats(), st.text(), st.binary()))
def test_fast_scalars_are_tagged_q(v):
    blob, back = roundtrip(v)
    assert blob[:1] == b"Q"
    assert same(back, v)


@pytest.mark.parametrize("v", [
    True, False, 0, 1, -1, 2 ** 63 - 1, -(2 ** 63), 0.0, -0.0, math.inf, -math.inf, math.nan, "", "é€𝄞", b"",
    b"\x00\xff" * 10, (), [], {}, (1,), [True, 1, 1.0, "1", b"1"], {"a": 1, 1: "a", (1, 2): [3], None: {}},
    {"z": 1, "a": 2, "m": 3}, (((),),), [None] * 3,
])
def test_plain_examples(v):
    blob, back = roundtrip(v)
    assert blob[:1] == b"Q"
    assert same(back, v)
    if isinstance(v, dict):
        assert list(back) == list(v)  # insertion order


@pytest.mark.parametrize("v", [2 ** 63, -(2 ** 63) - 1, 10 ** 40, "\udc80", "a\ud800b", ["ok", "\udfff"],
                               {"k": 2 ** 64}])
def test_values_outside_the_fast_range_go_to_pickle_and_roundtrip(v):
    blob, back = roundtrip(v)
    assert blob[:1] == b"P"
    assert same(back, v)


def test_bool_stays_bool_and_tuple_stays_tuple():
    for v in (True, (True, 1), [False, 0], {True: 1, 2: False}):
        _, back = roundtrip(v)
        assert same(back, v)
    assert type(codec_decode(codec_encode((1,)))) is tuple
    assert type(codec_decode(codec_encode(True))) is bool


def nest(k):
    v = 0
    for _ in range(k):
        v = [v]
    return v


def test_nesting_depth():
    assert codec_encode(nest(MAX_DEPTH))[:1] == b"Q"
    assert codec_encode(nest(MAX_DEPTH + 1))[:1] == b"P"
    for k in (MAX_DEPTH, MAX_DEPTH + 1, 200):
        assert same(codec_decode(codec_encode(nest(k))), nest(k))


def test_self_referencing_list_roundtrips_through_pickle():
    a = [1, "x"]
    a.append(a)
    blob = codec_encode(a)
    assert blob[:1] == b"P"
    back = codec_decode(blob)
    assert back[:2] == [1, "x"] and back[2] is back


# ---------------------------------------------------------------- pickle: everything else

class Text(str):
    pass


class Number(int):
    pass


class Real(float):
    pass


class Blob(bytes):
    pass


class Items(list):
    pass


Point = collections.namedtuple("Point", "x y")


class Plain(object):
    def __init__(self, a):
        self.a = a

    def __eq__(self, other):
        return type(other) is Plain and other.a == self.a


@pytest.mark.parametrize("v", [
    Text("hello"), Number(7), Real(1.5), Blob(b"b"), Items([1, 2]),
    collections.OrderedDict([("b", 1), ("a", 2)]), Point(1, 2), collections.defaultdict(int, {"a": 1}),
    collections.Counter("abca"), {1, 2}, frozenset({"a"}), 1 + 2j, Decimal("1.10"), bytearray(b"ba"),
    range(3), Plain(3), [1, Text("t")], (Point(1, 2),), {"k": Number(1)}, {Text("k"): 1},
])
def test_everything_else_is_pickled_and_keeps_its_type(v):
    blob, back = roundtrip(v)
    assert blob[:1] == b"P"
    assert blob[1:] == pickle.dumps(v, pickle.HIGHEST_PROTOCOL)
    assert back == v and type(back) is type(v)
    if isinstance(v, (list, tuple)):
        assert [type(x) for x in back] == [type(x) for x in v]
    if isinstance(v, dict):
        assert [type(k) for k in back] == [type(k) for k in v]
        assert [type(x) for x in back.values()] == [type(x) for x in v.values()]
        assert list(back) == list(v)


@given(st.recursive(st.one_of(st.text(), st.integers()).map(lambda x: Text(x) if isinstance(x, str) else Number(x)),
                    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple),
                    max_leaves=8))
def test_containers_holding_subclasses_go_to_pickle(v):
    blob, back = roundtrip(v)
    if type(v) in (Text, Number) or any_subclass(v):
        assert blob[:1] == b"P"
    assert same_types(back, v)


def any_subclass(v):
    if type(v) in (Text, Number):
        return True
    return isinstance(v, (list, tuple)) and any(any_subclass(x) for x in v)


def same_types(a, b):
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, (list, tuple)):
        return all(same_types(x, y) for x, y in zip(a, b))
    return True


def test_unpicklable_object_error_names_the_type_and_pickles_reason():
    with pytest.raises(ValueError) as e:
        codec_encode(threading.Lock())
    assert str(e.value) == ("pickle can't serialize a lock: TypeError: cannot pickle '_thread.lock' object "
                            "(define serialize/deserialize in the app module to handle it)")
    with pytest.raises(ValueError, match=r"pickle can't serialize a list: TypeError: cannot pickle '_thread\.lock'"):
        codec_encode([1, threading.Lock()])


# ---------------------------------------------------------------- the app's own pair

@settings(max_examples=200)
@given(st.binary())
def test_user_blob_is_u_plus_exactly_what_serialize_returned(body):
    received = []

    def serialize(obj):
        return body

    def deserialize(data):
        received.append(data)
        return ("decoded", data)

    blob = codec_encode(object(), serialize, deserialize)
    assert blob == b"U" + body
    assert codec_decode(blob, serialize, deserialize) == ("decoded", body)
    assert len(received) == 1 and type(received[0]) is bytes and received[0] == body


@given(plain)
def test_user_pair_is_the_only_codec(v):
    """With a pair, even plain values go through it (never Q or P)."""
    calls = []

    def serialize(obj):
        calls.append("s")
        return pickle.dumps(obj, 4)

    def deserialize(data):
        calls.append("d")
        return pickle.loads(data)

    blob = codec_encode(v, serialize, deserialize)
    assert blob[:1] == b"U" and blob[1:] == pickle.dumps(v, 4)
    assert same(codec_decode(blob, serialize, deserialize), v)
    assert calls == ["s", "d"]


def test_user_serialize_may_return_bytearray():
    blob = codec_encode("x", lambda o: bytearray(b"\x00ab"), lambda d: d)
    assert blob == b"U\x00ab"


@pytest.mark.parametrize("returned,name", [("text", "str"), (None, "NoneType"), (42, "int"), ([b"a"], "list")])
def test_user_serialize_returning_a_wrong_type_is_refused(returned, name):
    with pytest.raises(ValueError) as e:
        codec_encode(Point(1, 2), lambda o: returned, lambda d: d)
    assert str(e.value) == f"the app's serialize() returned {name} for a Point; it must return bytes"


def test_user_serialize_raising_names_the_type_and_cause():
    def serialize(obj):
        raise KeyError("no codec for this")

    with pytest.raises(ValueError) as e:
        codec_encode(Plain(1), serialize, lambda d: d)
    assert str(e.value) == "the app's serialize() raised on a Plain: KeyError: 'no codec for this'"


def test_user_deserialize_raising_is_reported():
    def deserialize(data):
        raise ValueError("bad blob")

    with pytest.raises(ValueError, match=r"the app's deserialize\(\) raised: ValueError: bad blob"):
        codec_decode(b"Uxyz", lambda o: b"", deserialize)


def test_blob_of_the_other_codec_is_refused():
    pair = (lambda o: b"", lambda d: d)
    with pytest.raises(ValueError, match="does not belong to this worker's codec"):
        codec_decode(codec_encode(1), *pair)
    with pytest.raises(ValueError, match="does not belong to this worker's codec"):
        codec_decode(codec_encode(Plain(1)), *pair)
    with pytest.raises(ValueError, match="does not belong to this worker's codec"):
        codec_decode(b"Uabc")


# ---------------------------------------------------------------- corrupt input

def test_empty_and_truncated_blobs_are_errors():
    with pytest.raises(ValueError, match="empty blob"):
        codec_decode(b"")
    blob = codec_encode(["abc", 1, {"k": b"v"}])
    for cut in range(1, len(blob)):
        with pytest.raises(ValueError):
            codec_decode(blob[:cut])
    with pytest.raises(ValueError, match="trailing"):
        codec_decode(blob + b"\x00")


def test_huge_declared_lengths_do_not_allocate():
    for body in (b"[\xff\xff\xff\xff", b"(\xff\xff\xff\xff", b"{\xff\xff\xff\xff", b"s\xff\xff\xff\xff",
                 b"b\xff\xff\xff\xff"):
        with pytest.raises(ValueError):
            codec_decode(b"Q" + body)


@settings(max_examples=1000)
@given(st.binary(max_size=64))
def test_random_fast_blobs_decode_or_raise_valueerror(body):
    try:
        codec_decode(b"Q" + body)
    except ValueError:
        pass  # anything else (another exception, a crash) fails the test


@given(plain)
def test_reencoding_a_decoded_value_gives_the_same_blob(v):
    blob = codec_encode(v)
    assert codec_encode(codec_decode(blob)) == blob
