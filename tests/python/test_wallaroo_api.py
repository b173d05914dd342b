"""Tests of the pure-Python `wallaroo` package (docs/wallaroo-compat.md,
"API surface")."""

import datetime
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import pytest

import wallaroo

PYTHON_DIR = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "python"))


def next_index(base):
    """The counter value the next decoration with `base` will get."""
    return wallaroo._C[base] + 1


def run_python(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# --------------------------------------------------------------------------
# Fixtures: a few decorated objects and configs
# --------------------------------------------------------------------------

class Counter(object):
    def __init__(self):
        self.n = 0


@wallaroo.computation(name="double")
def double(data):
    """Doubles data."""
    return data * 2


@wallaroo.computation_multi(name="split words")
def split_words(data):
    return data.split(" ")


@wallaroo.state_computation(name="count", state=Counter)
def count(data, state):
    state.n += 1
    return (data, state.n)


@wallaroo.state_computation_multi(name="count multi", state=Counter)
def count_multi(data, state):
    state.n += 1
    return [data] * state.n


@wallaroo.key_extractor
def first_letter(data):
    return data[0]


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_utf8(bs):
    return bs.decode("utf-8")


@wallaroo.encoder
def encode_line(data):
    return (str(data) + "\n").encode("utf-8")


class Sum(wallaroo.Aggregation):
    def initial_accumulator(self):
        return [0]

    def update(self, data, acc):
        acc[0] += data

    def combine(self, a, b):
        return [a[0] + b[0]]

    def output(self, key, acc):
        return (key, acc[0])


class Gen(object):
    def initial_value(self):
        return 0

    def apply(self, v):
        return v + 1


def tcp_source(name="in"):
    return wallaroo.TCPSourceConfig(name, "127.0.0.1", "7000", decode_utf8)


def tcp_sink(port="7002"):
    return wallaroo.TCPSinkConfig("127.0.0.1", port, encode_line)


# --------------------------------------------------------------------------
# Decorators
# --------------------------------------------------------------------------

def test_computation_methods_and_attributes():
    assert double.name() == "double"
    assert double.compute(3) == 6
    assert isinstance(double, wallaroo.Computation)
    assert not isinstance(double, wallaroo.StateComputation)
    assert double.is_stateful is False
    assert double.initial_state is None
    assert double._is_multi is False
    assert type(double).__doc__ == "Doubles data."
    assert double() is double
    assert double(1, 2, 3) is double


def test_computation_multi():
    assert split_words.compute_multi("a b c") == ["a", "b", "c"]
    assert split_words.name() == "split words"
    assert isinstance(split_words, wallaroo.ComputationMulti)
    assert split_words._is_multi is True
    assert not hasattr(split_words, "compute")


def test_state_computation():
    s = count.initial_state()
    assert isinstance(s, Counter)
    assert count.initial_state() is not s
    assert count.compute("x", s) == ("x", 1)
    assert count.compute("y", s) == ("y", 2)
    assert count.is_stateful is True
    assert count._is_multi is False
    assert isinstance(count, wallaroo.StateComputation)
    assert not isinstance(count, wallaroo.ComputationMulti)


def test_state_computation_multi():
    s = count_multi.initial_state()
    assert count_multi.compute_multi("a", s) == ["a"]
    assert count_multi.compute_multi("a", s) == ["a", "a"]
    assert isinstance(count_multi, wallaroo.StateComputationMulti)
    assert isinstance(count_multi, wallaroo.StateComputation)
    assert isinstance(count_multi, wallaroo.ComputationMulti)
    assert count_multi.is_stateful is True
    assert count_multi._is_multi is True


def test_state_may_be_any_value_until_used():
    # The reference tests decorate with state="world" and never call it.
    @wallaroo.state_computation(name="s", state="world")
    def f(data, state):
        return (data, state)
    assert f.compute("hello", "world") == ("hello", "world")


def test_key_extractor_int_and_bool_become_chr():
    assert first_letter.extract_key("abc") == "a"

    @wallaroo.key_extractor
    def by_int(data):
        return data

    assert by_int.extract_key(65) == "A"
    assert by_int.extract_key(True) == "\x01"
    assert by_int.extract_key(b"k") == b"k"
    assert by_int.extract_key("k") == "k"
    assert isinstance(by_int, wallaroo.KeyExtractor)
    # the fast path gets the raw function; the engine maps ints itself
    assert type(by_int)._quoll_func(65) == 65


def test_decoder():
    assert decode_utf8.header_length() == 4
    assert decode_utf8.payload_length(struct.pack(">I", 10)) == 10
    assert decode_utf8.decode(b"hi") == "hi"
    assert isinstance(decode_utf8, wallaroo.OctetDecoder)
    assert isinstance(decode_utf8, wallaroo.Decoder)


def test_decoder_defaults_and_bare_use():
    @wallaroo.decoder()
    def d1(bs):
        return bs

    @wallaroo.decoder
    def d2(bs):
        return bs

    for d in (d1, d2):
        assert d.header_length() == 4
        assert d.payload_length(b"\x00\x00\x01\x00") == 256
        assert type(d)._quoll_header_length == 4
        assert type(d)._quoll_length_fmt == ">I"


def test_decoder_other_header():
    @wallaroo.decoder(header_length=2, length_fmt="<H")
    def d(bs):
        return bs
    assert d.header_length() == 2
    assert d.payload_length(b"\x01\x00") == 1
    assert type(d)._quoll_header_length == 2
    assert type(d)._quoll_length_fmt == "<H"


@pytest.mark.parametrize("hl,fmt", [(4, ">H"), (2, ">Q"), (9, ">9s"),
                                    (0, ""), (4, "bogus%")])
def test_decoder_bad_header_params(hl, fmt, capsys):
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.decoder(header_length=hl, length_fmt=fmt)
    assert "API_Error: decoder" in capsys.readouterr().out


def test_encoder():
    assert encode_line.encode(5) == b"5\n"
    assert isinstance(encode_line, wallaroo.OctetEncoder)
    assert isinstance(encode_line, wallaroo.Encoder)


def test_generated_class_names_are_relative_to_counters():
    n = next_index(wallaroo.Computation)

    @wallaroo.computation(name="x")
    def my_computation(data):
        return data

    cls_name = "Computation_{}__my_computation".format(n)
    assert type(my_computation).__name__ == cls_name
    assert type(my_computation).__qualname__ == cls_name
    assert type(my_computation).__module__ == "wallaroo"
    assert getattr(wallaroo, cls_name) is type(my_computation)

    # other bases have their own counter
    k = next_index(wallaroo.KeyExtractor)

    @wallaroo.key_extractor
    def extract_key(data):
        return data

    assert type(extract_key).__name__ == "KeyExtractor_{}__extract_key".format(k)

    n2 = next_index(wallaroo.Computation)
    assert n2 == n + 1


def test_generated_names_per_base_in_fresh_process():
    out = run_python("""
        import wallaroo, wallaroo.experimental as wx

        @wallaroo.computation(name="My Computation")
        def my_computation(data):
            return data

        @wallaroo.computation("My Computation 2")
        def my_computation2(data):
            return data * 2

        @wallaroo.computation_multi(name="m")
        def multi(data):
            return [data]

        @wallaroo.state_computation(name="s", state=list)
        def st(data, state):
            return data

        @wallaroo.state_computation_multi(name="sm", state=list)
        def stm(data, state):
            return [data]

        @wallaroo.key_extractor
        def extract_key(data):
            return data

        @wallaroo.decoder(header_length=4, length_fmt=">I")
        def dec(bs):
            return bs

        @wallaroo.encoder
        def enc(d):
            return d

        @wx.octet_message_encoder
        def enc2(d):
            return d

        @wx.stream_message_decoder
        def sdec(bs):
            return bs

        @wx.stream_message_encoder
        def senc(d):
            return d

        @wx.octet_message_decoder
        def odec(bs):
            return bs

        for o in (my_computation, my_computation2, multi, st, stm,
                  extract_key, dec, enc, enc2, sdec, senc, odec):
            print(type(o).__name__)
    """)
    assert out.split() == [
        "Computation_1__my_computation",
        "Computation_2__my_computation2",
        "ComputationMulti_1__multi",
        "StateComputation_1__st",
        "StateComputationMulti_1__stm",
        "KeyExtractor_1__extract_key",
        "OctetDecoder_1__dec",
        "OctetEncoder_1__enc",
        "OctetEncoder_2__enc2",
        "ConnectorDecoder_1__sdec",
        "ConnectorEncoder_1__senc",
        "OctetDecoder_2__odec",
    ]


def test_runtime_set_function_name_inside_setup():
    def make(name):
        def f(data, state=None):
            return data
        f.__name__ = name
        return wallaroo.computation(name=name)(f)

    n = next_index(wallaroo.Computation)
    c = make("tag__a b")
    assert type(c).__name__ == "Computation_{}__tag__a b".format(n)
    assert pickle.loads(pickle.dumps(c)).compute(1) == 1


def test_attach_to_module_naming():
    class K(object):
        pass

    def func():
        pass

    cls = wallaroo.attach_to_module(K, "Thing", func, 7)
    assert cls is K
    assert K.__qualname__ == "Thing_7__func"
    assert wallaroo.Thing_7__func is K
    wallaroo.attach_to_module(K, "Other", func)
    assert K.__qualname__ == "Other__func"


@pytest.mark.parametrize("obj", [double, split_words, count, count_multi,
                                 first_letter, decode_utf8, encode_line])
def test_pickle_round_trip(obj):
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        clone = pickle.loads(pickle.dumps(obj, protocol=proto))
        assert type(clone) is type(obj)
    assert wallaroo.deserialize(wallaroo.serialize(obj)).__class__ is \
        type(obj)


def test_pickle_round_trip_behaviour():
    assert pickle.loads(pickle.dumps(double)).compute(2) == 4
    assert pickle.loads(pickle.dumps(split_words)).compute_multi("a b") == \
        ["a", "b"]
    c = pickle.loads(pickle.dumps(count))
    assert c.compute("x", c.initial_state()) == ("x", 1)
    assert pickle.loads(pickle.dumps(first_letter)).extract_key("zz") == "z"
    d = pickle.loads(pickle.dumps(decode_utf8))
    assert d.payload_length(struct.pack(">I", 3)) == 3


def test_quoll_hooks():
    hooks = {
        double: "computation",
        split_words: "computation_multi",
        count: "state_computation",
        count_multi: "state_computation_multi",
        first_letter: "key_extractor",
        decode_utf8: "decoder",
        encode_line: "encoder",
    }
    for obj, kind in hooks.items():
        t = type(obj)
        assert t._quoll_kind == kind
        # staticmethod: not bound, neither via the class nor the instance
        assert isinstance(t.__dict__["_quoll_func"], staticmethod)
    assert type(double)._quoll_func(4) == double.compute(4) == 8
    assert type(split_words)._quoll_func("a b") == ["a", "b"]
    assert type(count)._quoll_state_class is Counter
    assert type(count_multi)._quoll_state_class is Counter
    s = Counter()
    assert type(count)._quoll_func("q", s) == ("q", 1)
    assert type(decode_utf8)._quoll_func(b"x") == "x"
    assert type(decode_utf8)._quoll_header_length == 4
    assert type(decode_utf8)._quoll_length_fmt == ">I"
    assert type(encode_line)._quoll_func(1) == b"1\n"
    assert double._quoll_func(1) == 2  # also fine through the instance
    assert not hasattr(wallaroo.Computation, "_quoll_func")


def test_hooks_are_the_raw_user_function():
    def f(data):
        return data
    c = wallaroo.computation(name="raw")(f)
    assert type(c)._quoll_func is f


# --------------------------------------------------------------------------
# Arity checks
# --------------------------------------------------------------------------

def test_arity_defaults_count_as_optional():
    @wallaroo.computation(name="tag")
    def tag(data, state=None):
        return data
    assert tag.compute(1) == 1

    @wallaroo.state_computation(name="st", state=Counter)
    def st(data, state, extra=1):
        return data
    assert st.compute(1, None) == 1


@pytest.mark.parametrize("decorate,arity,func_src", [
    (lambda f: wallaroo.computation(name="NAME")(f), 1, "def f(): pass"),
    (lambda f: wallaroo.computation(name="NAME")(f), 1, "def f(a, b): pass"),
    (lambda f: wallaroo.computation(name="NAME")(f), 1, "def f(*args): pass"),
    (lambda f: wallaroo.computation_multi(name="NAME")(f), 1,
     "def f(a, b): pass"),
    (lambda f: wallaroo.state_computation(name="NAME", state=list)(f), 2,
     "def f(a): pass"),
    (lambda f: wallaroo.state_computation_multi(name="NAME", state=list)(f),
     2, "def f(a, b, c): pass"),
])
def test_arity_errors(decorate, arity, func_src, capsys):
    ns = {}
    exec(func_src, ns)
    with pytest.raises(wallaroo.WallarooParameterError) as ei:
        decorate(ns["f"])
    term = "parameter" if arity == 1 else "parameters"
    expected = "your function NAME must have {} {}".format(arity, term)
    assert expected in str(ei.value)
    assert "API_Error: Incompatible function arity, " + expected in \
        capsys.readouterr().out


@pytest.mark.parametrize("decorator", [wallaroo.key_extractor,
                                       wallaroo.encoder,
                                       wallaroo.decoder(4, ">I")])
def test_arity_errors_use_function_name(decorator):
    def two(a, b):
        return a
    with pytest.raises(wallaroo.WallarooParameterError,
                       match="your function two must have 1 parameter"):
        decorator(two)


def test_non_callable(capsys):
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo._validate_arity_compatability("thing", 42, 1)
    out = capsys.readouterr().out
    assert "API_Error: Expected a callable object but got a 42 for thing" in out


def test_callable_instance_counts_self():
    class C(object):
        def __call__(self, data):
            return data
    # getfullargspec counts `self` for callable instances: (self, data) is
    # 2 parameters, so a 1-ary check fails, as in Wallaroo.
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo._validate_arity_compatability("c", C(), 1)
    wallaroo._validate_arity_compatability("c", C(), 2)


def test_decorator_without_name_is_a_clear_error():
    with pytest.raises(wallaroo.WallarooParameterError,
                       match=r"computation\(name="):
        @wallaroo.computation
        def oops(data):
            return data


# --------------------------------------------------------------------------
# Pipelines and the application tuple
# --------------------------------------------------------------------------

def test_linear_pipeline_tuple_layout():
    src = tcp_source()
    sink = tcp_sink()
    p = (wallaroo.source("Pipeline A", src)
         .to(double)
         .key_by(first_letter)
         .to(count)
         .to(split_words)
         .collect()
         .to_sink(sink))
    app = wallaroo.build_application("App", p)
    assert app == ("App", 0, [[
        ("source", "Pipeline A", src.to_tuple()),
        ("to", double),
        ("key_by", first_letter),
        ("to_state", count),
        ("to", split_words),
        ("collect", ""),
        ("to_sink", sink.to_tuple()),
    ]], [[]])
    assert isinstance(app[2], list) and isinstance(app[2][0], list)
    assert isinstance(app[3], list)


def test_window_stage_tuples():
    rw = (wallaroo.range_windows(wallaroo.seconds(2))
          .with_slide(wallaroo.seconds(1))
          .with_delay(wallaroo.milliseconds(500))
          .with_late_data_policy("fire-per-message")
          .over(Sum))
    cw = wallaroo.count_windows(5).over(Sum)
    p = (wallaroo.source("p", tcp_source())
         .key_by(first_letter).to(rw).to(cw).to_sink(tcp_sink()))
    vs = wallaroo.build_application("w", p)[2]
    stage = vs[0][2]
    assert stage[:4] == ("to_range_windows", 2 * 10 ** 9, 10 ** 9,
                         500 * 10 ** 6)
    assert isinstance(stage[4], Sum)
    assert stage[5] == "fire-per-message"
    assert vs[0][3][0:2] == ("to_count_windows", 5)
    assert isinstance(vs[0][3][2], Sum)


def test_range_window_defaults_and_int_conversion():
    rw = wallaroo.range_windows(wallaroo.seconds(1.5)).over(Sum)
    assert (rw.range, rw.slide, rw.delay, rw.late_data_policy) == \
        (1500000000, 1500000000, 0, "drop")
    assert type(rw.range) is int
    assert isinstance(rw.aggregation, Sum)


def test_range_windows_builder_is_mutable_and_over_is_repeatable():
    b = wallaroo.range_windows(100)
    assert b.with_slide(50) is b
    r1 = b.over(Sum)
    r2 = b.over(Sum)
    assert r1.aggregation is not r2.aggregation
    assert r1.slide == r2.slide == 50


def test_over_accepts_an_instance():
    agg = Sum()
    assert wallaroo.count_windows(3).over(agg).aggregation is agg
    assert wallaroo.range_windows(3).over(agg).aggregation is agg


@pytest.mark.parametrize("method,arg", [("with_slide", 10),
                                        ("with_delay", 10),
                                        ("with_late_data_policy", "drop")])
def test_with_called_twice(method, arg, capsys):
    b = wallaroo.range_windows(100)
    getattr(b, method)(arg)
    with pytest.raises(wallaroo.WallarooParameterError):
        getattr(b, method)(arg)
    assert ("API_Error: Only call `{}()` once per window specification."
            .format(method)) in capsys.readouterr().out


@pytest.mark.parametrize("build,match", [
    (lambda: wallaroo.range_windows(0).over(Sum), "range must be > 0"),
    (lambda: wallaroo.range_windows(-5).over(Sum), "range must be > 0"),
    (lambda: wallaroo.range_windows(10).with_slide(0).over(Sum),
     "slide must be > 0"),
    (lambda: wallaroo.range_windows(10).with_slide(20).over(Sum),
     "slide cannot be greater than its range"),
    (lambda: wallaroo.range_windows(10).with_delay(-1).over(Sum),
     "delay must be >= 0"),
    (lambda: wallaroo.range_windows("ten").over(Sum),
     "range must be a number"),
    (lambda: wallaroo.range_windows(10).with_late_data_policy("later"),
     "Invalid value for late_data_policy"),
    (lambda: wallaroo.count_windows(0).over(Sum), "count must be an int >= 1"),
])
def test_window_parameter_errors(build, match):
    with pytest.raises(wallaroo.WallarooParameterError, match=match):
        build()


@pytest.mark.parametrize("missing", ["initial_accumulator", "update",
                                     "combine", "output"])
def test_validate_aggregation(missing, capsys):
    methods = {m: (lambda self, *a: None) for m in
               ("initial_accumulator", "update", "combine", "output")}
    del methods[missing]
    Agg = type("Agg", (wallaroo.Aggregation,), methods)
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.count_windows(2).over(Agg)
    assert "API_Error: Aggregation must have method '{}'.".format(missing) in \
        capsys.readouterr().out


def test_aggregation_default_name():
    assert Sum().name() == "Sum"
    assert Sum()() is not None


def test_pipeline_is_immutable():
    p = wallaroo.source("p", tcp_source())
    p2 = p.to(double)
    p3 = p.to(split_words)
    assert len(p._pipeline_tree.vs) == 1
    assert [s[0] for s in p._pipeline_tree.vs[0]] == ["source"]
    assert p2._pipeline_tree.vs[0][-1] == ("to", double)
    assert p3._pipeline_tree.vs[0][-1] == ("to", split_words)
    closed = p2.to_sink(tcp_sink())
    assert closed._is_closed() and not p2._is_closed()
    assert p2.to(double)._pipeline_tree.vs[0][-1] == ("to", double)
    p4 = p.merge(p2)
    assert len(p._pipeline_tree.vs) == 1 and len(p2._pipeline_tree.vs) == 1
    assert len(p4._pipeline_tree.vs) == 3
    c = p2.clone()
    assert c is not p2 and c._pipeline_tree.vs == p2._pipeline_tree.vs


def test_incremental_building_in_a_loop():
    p = wallaroo.source("p", tcp_source())
    for _ in range(3):
        p = p.key_by(first_letter)
    p = p.to_sink(tcp_sink())
    assert [s[0] for s in wallaroo.build_application("a", p)[2][0]] == \
        ["source", "key_by", "key_by", "key_by", "to_sink"]


def test_merge_index_layout():
    a = wallaroo.source("A", tcp_source("a")).to(double)
    b = wallaroo.source("B", tcp_source("b")).to(split_words)
    c = wallaroo.source("C", wallaroo.GenSourceConfig("c", Gen()))
    ab = a.merge(b)
    t = ab._pipeline_tree
    # node 0 = A, node 1 = merge(0, 2), node 2 = B
    assert t.root_idx == 1
    assert t.vs[1] == []
    assert t.es == [[], [0, 2], []]
    assert t.vs[2][0][1] == "B"
    abc = ab.to(double).merge(c).key_by(first_letter)
    t = abc._pipeline_tree
    # node 3 = merge(1, 4), node 4 = C
    assert t.root_idx == 3
    assert t.es == [[], [0, 2], [], [1, 4], []]
    assert t.vs[1] == [("to", double)]
    assert t.vs[3] == [("key_by", first_letter)]
    assert t.vs[4] == [("source", "C", ("gen", "c", t.vs[4][0][2][2]))]
    # merging a merged tree on the right shifts its indices
    d = wallaroo.source("D", tcp_source("d"))
    dab = d.merge(ab)
    t = dab._pipeline_tree
    # node 0 = D, node 1 = merge(0, 3), nodes 2.. = ab shifted by 2
    assert t.root_idx == 1
    assert t.es == [[], [0, 3], [], [2, 4], []]
    app = wallaroo.build_application("m", dab.to_sink(tcp_sink()))
    assert app[1] == 1
    assert app[2][1] == [("to_sink", tcp_sink().to_tuple())]
    assert app[3] == [[], [0, 3], [], [2, 4], []]


def test_sources_and_sinks_helpers():
    a = wallaroo.source("A", tcp_source("a"))
    b = wallaroo.source("B", tcp_source("b"))
    p = a.merge(b).to_sinks([tcp_sink("1"), tcp_sink("2")])
    assert [s[1] for s in p._sources()] == ["A", "B"]
    assert p._sinks() == []  # only to_sink stages, as in Wallaroo
    q = a.to_sink(tcp_sink())
    assert q._sinks() == [("to_sink", tcp_sink().to_tuple())]
    assert wallaroo.Pipeline.from_source("X", tcp_source())._sources()[0][1] \
        == "X"
    assert q.__to_tuple__("n")[0] == "n"


def test_to_sinks_tuple():
    p = wallaroo.source("p", tcp_source()).to_sinks(
        [tcp_sink("1"), tcp_sink("2")])
    stage = wallaroo.build_application("a", p)[2][0][-1]
    assert stage == ("to_sinks", [tcp_sink("1").to_tuple(),
                                  tcp_sink("2").to_tuple()])


def test_build_requires_sink(capsys):
    p = wallaroo.source("p", tcp_source()).to(double)
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.build_application("a", p)
    assert "API_Error: An application must end with to_sink/s." in \
        capsys.readouterr().out


@pytest.mark.parametrize("add", [
    lambda p: p.to(double),
    lambda p: p.key_by(first_letter),
    lambda p: p.collect(),
    lambda p: p.to_sink(tcp_sink()),
    lambda p: p.to_sinks([tcp_sink()]),
])
def test_no_stages_after_sink(add, capsys):
    p = wallaroo.source("p", tcp_source()).to_sink(tcp_sink())
    with pytest.raises(wallaroo.WallarooParameterError):
        add(p)
    assert "API_Error: You can't add stages after to_sink/s." in \
        capsys.readouterr().out


def test_empty_to_sinks_rejected_at_build():
    p = wallaroo.source("p", tcp_source()).to_sinks([])
    with pytest.raises(wallaroo.WallarooParameterError,
                       match="to_sinks.*empty list"):
        wallaroo.build_application("a", p)


def test_merge_with_only_one_side_keyed_rejected():
    a = wallaroo.source("A", tcp_source("a")).key_by(first_letter)
    b = wallaroo.source("B", tcp_source("b")).to(double)
    for p in (a.merge(b), b.merge(a)):
        with pytest.raises(wallaroo.WallarooParameterError,
                           match="key_by/collect"):
            wallaroo.build_application("a", p.to_sink(tcp_sink()))
    c = wallaroo.source("C", tcp_source("c")).collect()
    ok = a.merge(c).to(count).to_sink(tcp_sink())
    wallaroo.build_application("a", ok)
    # A merge node with no stages ends like its inputs
    nested = a.merge(c).merge(b)
    with pytest.raises(wallaroo.WallarooParameterError,
                       match="key_by/collect"):
        wallaroo.build_application("a", nested.to_sink(tcp_sink()))
    fine = a.merge(c).merge(wallaroo.source("D", tcp_source("d"))
                            .key_by(first_letter))
    wallaroo.build_application("a", fine.to_sink(tcp_sink()))


def test_merge_with_closed_pipeline_rejected():
    a = wallaroo.source("A", tcp_source("a"))
    closed = wallaroo.source("B", tcp_source("b")).to_sink(tcp_sink())
    with pytest.raises(wallaroo.WallarooParameterError, match="merge"):
        wallaroo.build_application("a", a.merge(closed).to_sink(tcp_sink()))
    # receiver closed: the merged pipeline is still closed
    merged = closed.merge(a)
    with pytest.raises(wallaroo.WallarooParameterError, match="merge"):
        wallaroo.build_application("a", merged)
    with pytest.raises(wallaroo.WallarooParameterError):
        merged.to(double)


def test_merge_requires_pipeline():
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.source("A", tcp_source()).merge("nope")


@pytest.mark.parametrize("arg,match", [
    (wallaroo.range_windows(10), r"over\(YourAggregationClass\)"),
    (wallaroo.count_windows(10), r"over\(YourAggregationClass\)"),
    (lambda d: d, r"@wallaroo.computation"),
    (42, "to\\(\\) expects a computation"),
    ("text", "to\\(\\) expects a computation"),
    (None, "to\\(\\) expects a computation"),
    (wallaroo.Computation, "class"),
    (Sum(), "Aggregation"),
])
def test_to_rejects_non_computations(arg, match):
    p = wallaroo.source("p", tcp_source())
    with pytest.raises(wallaroo.WallarooParameterError, match=match):
        p.to(arg)


def test_to_accepts_duck_typed_computations():
    class Duck(object):
        def name(self):
            return "duck"

        def compute(self, data):
            return data

    class DuckState(object):
        def initial_state(self):
            return {}

        def compute(self, data, state):
            return data

    p = wallaroo.source("p", tcp_source()).to(Duck()).to(DuckState())
    vs = p._pipeline_tree.vs[0]
    assert vs[1][0] == "to" and vs[2][0] == "to"  # not a StateComputation


def test_key_by_rejects_plain_function():
    with pytest.raises(wallaroo.WallarooParameterError,
                       match="key_extractor"):
        wallaroo.source("p", tcp_source()).key_by(lambda d: d)


def test_source_and_sink_need_to_tuple():
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.source("p", object())
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.source("p", tcp_source()).to_sink(object())
    with pytest.raises(wallaroo.WallarooParameterError):
        wallaroo.source("p", tcp_source()).to_sinks(tcp_sink())


# --------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------

def test_tcp_source_config():
    c = wallaroo.TCPSourceConfig("n", "h", "1", decode_utf8)
    assert c.to_tuple() == ("tcp", "n", "h", "1", decode_utf8, True, 10,
                            16384, 50)
    c = wallaroo.TCPSourceConfig("n", "h", 7000, decode_utf8, valid=False,
                                 parallelism=3, max_size=10,
                                 max_received_count=2)
    assert c.to_tuple() == ("tcp", "n", "h", "7000", decode_utf8, False, 3,
                            10, 2)


def test_tcp_source_config_needs_framed_decoder():
    with pytest.raises(wallaroo.WallarooParameterError, match="header_length"):
        wallaroo.TCPSourceConfig("n", "h", "1", encode_line)


def test_gen_source_config():
    g = Gen()
    assert wallaroo.GenSourceConfig("g", g).to_tuple() == ("gen", "g", g)


def test_tcp_sink_config():
    assert wallaroo.TCPSinkConfig("h", "2", encode_line).to_tuple() == \
        ("tcp", "", "h", "2", encode_line)
    assert wallaroo.TCPSinkConfig("h", 2, encode_line).to_tuple()[3] == "2"


def test_file_configs():
    assert wallaroo.FileSourceConfig("f", "/tmp/in.bin", decode_utf8) \
        .to_tuple() == ("file", "f", "/tmp/in.bin", decode_utf8)
    assert wallaroo.FileSinkConfig("/tmp/out", encode_line).to_tuple() == \
        ("file", "", "/tmp/out", encode_line)


def test_kafka_documented_configs():
    src = wallaroo.KafkaSourceConfig("k", "topic", [("h", "9092")], "Warn",
                                     decode_utf8)
    assert src.to_tuple() == ("kafka", "k", "topic", [("h", "9092")], "Warn",
                              decode_utf8)
    src = wallaroo.KafkaSourceConfig("k", "t", "a:1,b", "Info", decode_utf8)
    assert src.to_tuple()[3] == [("a", "1"), ("b", "9092")]
    sink = wallaroo.KafkaSinkConfig("t", [("h", 9093)], "Error", 5, 1000,
                                    encode_line)
    assert sink.to_tuple() == ("kafka", "", "t", [("h", "9093")], "Error", 5,
                               1000, encode_line)
    with pytest.raises(wallaroo.WallarooParameterError, match="log_level"):
        wallaroo.KafkaSinkConfig("t", [], "Loud", 0, 1, encode_line)


def test_kafka_cli_parsers():
    args = ["prog", "--kafka_source_topic", "in", "--kafka_source_brokers",
            "b1:9000,b2", "--kafka_source_log_level", "Info",
            "--kafka_sink_topic", "out", "--kafka_sink_brokers", "s1:1",
            "--kafka_sink_max_produce_buffer_ms", "7",
            "--kafka_sink_max_message_size", "2000", "--other", "x"]
    src = wallaroo.CustomKafkaSourceCLIParser(args, decode_utf8)
    assert src.to_tuple() == ("kafka", "kafka_source", "in",
                              [("b1", "9000"), ("b2", "9092")], "Info",
                              decode_utf8)
    named = wallaroo.CustomKafkaSourceCLIParser(
        args + ["--kafka_source_name", "ks"], decode_utf8)
    assert named.to_tuple()[1] == "ks"
    sink = wallaroo.CustomKafkaSinkCLIParser(args, encode_line)
    assert sink.to_tuple() == ("kafka", "", "out", [("s1", "1")], "Warn", 7,
                               2000, encode_line)
    assert wallaroo.DefaultKafkaSourceCLIParser(decode_utf8).to_tuple() == \
        ("kafka-internal", "kafka_source", decode_utf8)
    assert wallaroo.DefaultKafkaSourceCLIParser(decode_utf8, name="x") \
        .to_tuple() == ("kafka-internal", "x", decode_utf8)
    assert wallaroo.DefaultKafkaSinkCLIParser(encode_line).to_tuple() == \
        ("kafka-internal", "kafka_sink", encode_line)


# --------------------------------------------------------------------------
# CLI helpers
# --------------------------------------------------------------------------

def test_tcp_parse_input_addrs():
    args = ["prog", "--in", "A@127.0.0.1:7000,B@localhost:7001", "--x", "1"]
    assert wallaroo.tcp_parse_input_addrs(args) == [
        ("A", "127.0.0.1", "7000"), ("B", "localhost", "7001")]
    assert wallaroo.tcp_parse_input_addrs(["--in=N@h:1:512"]) == \
        [("N", "h", "1", "512")]
    assert wallaroo.tcp_parse_input_addrs(["-i", "N@h:1"]) == [("N", "h", "1")]


def test_tcp_parse_input_addrs_required(capsys):
    with pytest.raises(SystemExit):
        wallaroo.tcp_parse_input_addrs(["prog"])


def test_tcp_parse_output_addrs():
    assert wallaroo.tcp_parse_output_addrs(
        ["p", "--out", "127.0.0.1:7002,h:2", "--in", "x"]) == \
        [("127.0.0.1", "7002"), ("h", "2")]
    assert wallaroo.tcp_parse_output_addrs(["-o=h:1"]) == [("h", "1")]
    with pytest.raises(SystemExit):
        wallaroo.tcp_parse_output_addrs([])


def test_kafka_parse_source_options_defaults():
    assert wallaroo.kafka_parse_source_options([]) == \
        (None, "", [("", "9092")], "Warn")
    assert wallaroo.kafka_parse_source_options(
        ["--kafka_source_name=n", "--kafka_source_topic=t",
         "--kafka_source_brokers=h:1"]) == ("n", "t", [("h", "1")], "Warn")


def test_kafka_parse_sink_options():
    assert wallaroo.kafka_parse_sink_options([]) == \
        ("", "", [("", "9092")], "Warn", 0, 100000)
    assert wallaroo.kafka_parse_sink_options(
        ["--kafka_sink_max_produce_message_size", "55"])[5] == 55
    assert wallaroo.kafka_parse_sink_options(
        ["--kafka_sink_max_message_size=66"])[5] == 66


def test_kafka_log_level_choices():
    with pytest.raises(SystemExit):
        wallaroo.kafka_parse_source_options(["--kafka_source_log_level",
                                             "Loud"])


# --------------------------------------------------------------------------
# Misc exports
# --------------------------------------------------------------------------

def test_time_units():
    assert wallaroo.nanoseconds(7) == 7
    assert wallaroo.microseconds(2) == 2000
    assert wallaroo.milliseconds(3) == 3 * 10 ** 6
    assert wallaroo.seconds(2) == 2 * 10 ** 9
    assert wallaroo.seconds(1.5) == 1.5e9
    assert isinstance(wallaroo.seconds(1.5), float)
    assert wallaroo.minutes(1) == 60 * 10 ** 9
    assert wallaroo.hours(1) == 3600 * 10 ** 9


def test_serialize_uses_highest_protocol():
    data = {"a": (1, 2.5, b"\x00")}
    bs = wallaroo.serialize(data)
    assert isinstance(bs, bytes)
    assert bs[:2] == bytes([0x80, pickle.HIGHEST_PROTOCOL])
    assert wallaroo.deserialize(bs) == data


def test_args_default():
    assert wallaroo._ARGS == () or isinstance(wallaroo._ARGS, tuple)
    out = run_python("import wallaroo; print(repr(wallaroo._ARGS))")
    assert out.strip() == "()"


def test_dt_to_timestamp():
    dt = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    assert wallaroo.dt_to_timestamp(dt) == 1577836800.0


def test_connector_encoder_helper():
    enc = wallaroo.ConnectorEncoder()
    out = enc._encode(b"abc", 5, "k")
    assert out == struct.pack(">IqI1s3s", 3 + 1 + 12, 5, 1, b"k", b"abc")
    dt = datetime.datetime(1970, 1, 1, 0, 0, 2,
                           tzinfo=datetime.timezone.utc)
    assert struct.unpack(">q", enc._encode(b"", dt)[4:12])[0] == 2000


def test_base_class_hierarchy():
    assert issubclass(wallaroo.ComputationMulti, wallaroo.Computation)
    assert issubclass(wallaroo.StateComputation, wallaroo.Computation)
    assert issubclass(wallaroo.StateComputationMulti,
                      wallaroo.StateComputation)
    assert issubclass(wallaroo.StateComputationMulti,
                      wallaroo.ComputationMulti)
    for cls in (wallaroo.Computation, wallaroo.Aggregation,
                wallaroo.KeyExtractor, wallaroo.Encoder, wallaroo.Decoder):
        assert issubclass(cls, wallaroo.BaseWrapped)
    assert issubclass(wallaroo.OctetDecoder, wallaroo.Decoder)
    assert issubclass(wallaroo.ConnectorDecoder, wallaroo.Decoder)
    assert issubclass(wallaroo.OctetEncoder, wallaroo.Encoder)
    assert issubclass(wallaroo.ConnectorEncoder, wallaroo.Encoder)


def test_unbuffered_flushes_and_is_installed_for_pipes():
    class S(object):
        def __init__(self):
            self.flushes = 0
            self.data = []

        def write(self, d):
            self.data.append(d)
            return len(d)

        def writelines(self, ds):
            self.data.extend(ds)

        def flush(self):
            self.flushes += 1

        def isatty(self):
            return False

    s = S()
    u = wallaroo.Unbuffered(s)
    assert u.write("ab") == 2
    u.writelines(["c", "d"])
    assert s.data == ["ab", "c", "d"] and s.flushes == 2
    assert u.isatty() is False
    out = run_python("""
        import sys, wallaroo
        print(type(sys.stdout).__name__, type(sys.stderr).__name__)
    """)
    assert out.split() == ["Unbuffered", "Unbuffered"]


def test_wallaroo_never_imports_quoll():
    out = run_python("""
        import sys, wallaroo, wallaroo.experimental
        import wallaroo.experimental.connectors
        print(any(m == "quoll" or m.startswith("quoll.") for m in sys.modules))
    """)
    assert out.strip() == "False"


def test_from_wallaroo_import_star():
    out = run_python("""
        from wallaroo import *
        print(callable(serialize), callable(deserialize), callable(source),
              'struct' in dir())
    """)
    assert out.split() == ["True", "True", "True", "True"]
