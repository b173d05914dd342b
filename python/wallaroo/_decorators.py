"""The decorators, and the machinery that turns a decorated function into an
instance of a generated class.

Every decorated function gets its own class, a subclass of the base the
decorator stands for, named ``<Base>_<n>__<function name>`` (``n`` counts
the decorations per base) and stored as a global of the ``wallaroo``
package, whose name is also its ``__module__``: pickle finds it there by
reference, errors name it as Wallaroo did, and the engine recognises
generated classes by that module (see the package docstring).
"""

import datetime
import inspect
import struct
import sys
import threading
from collections import Counter
from typing import Any, Callable, Optional, Union, overload

from ._bases import (
    Computation,
    ComputationMulti,
    ConnectorDecoder,
    ConnectorEncoder,
    Decoder,
    Encoder,
    KeyExtractor,
    OctetDecoder,
    OctetEncoder,
    StateComputation,
    StateComputationMulti,
    _key_bytes,
    dt_to_timestamp,
)
from ._errors import WallarooParameterError, _api_error, _describe

# The package whose namespace holds the generated classes.
_PACKAGE = "wallaroo"


def _validate_arity_compatability(name: Any, obj: Any, arity: int) -> None:
    """Fail fast when ``obj`` cannot be called with ``arity`` positional
    arguments.  The check passes when ``arity`` lies between the number of
    positional parameters without defaults and the total number of
    positional parameters."""
    if not callable(obj):
        raise _api_error(
            "Expected a callable object but got a {0} for {1}"
            .format(obj, name))
    try:
        spec = inspect.getfullargspec(obj)
    except TypeError:
        # No introspectable signature (some builtins): cannot check.
        return
    upper_bound = len(spec.args)
    lower_bound = upper_bound - (len(spec.defaults) if spec.defaults else 0)
    if arity > upper_bound or arity < lower_bound:
        param_term = "parameter" if arity == 1 else "parameters"
        raise _api_error(
            "Incompatible function arity, your function {0} must have {1} {2}."
            .format(name, arity, param_term))


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if not isinstance(name, str):
        name = type(func).__name__
    return name


_attach_lock = threading.RLock()


def attach_to_module(cls: type, cls_name: str, func: Any,
                     idx: Optional[int] = None) -> Any:
    """Name ``cls`` ``<cls_name>_<idx>__<func name>`` and store it as a
    global of the ``wallaroo`` module so that pickle can find it."""
    name = "{cls}{idx}__{func}".format(
        cls=cls_name,
        idx="_{}".format(idx) if idx else "",
        func=_func_name(func))
    cls.__name__ = name
    cls.__qualname__ = name
    cls.__module__ = _PACKAGE
    namespace = vars(sys.modules[_PACKAGE])
    with _attach_lock:
        namespace[name] = cls
    return namespace[name]


_C: "Counter[type]" = Counter()


def _make_class(base_cls: type, ns: dict[str, Any]) -> type:
    return type(base_cls.__name__, (base_cls,), ns)


def _wallaroo_wrap(name: Any, func: Callable[..., Any], base_cls: type,
                   **kwargs: Any) -> Any:
    """Generate, name and register the class for a decorated ``func``."""
    ns: dict[str, Any] = {"__module__": _PACKAGE,
                          "__doc__": getattr(func, "__doc__", None)}

    if issubclass(base_cls, Computation):
        multi = issubclass(base_cls, ComputationMulti)
        if issubclass(base_cls, StateComputation):
            state_class = kwargs.pop("state_class")

            def comp(self: Any, data: Any, state: Any) -> Any:
                return func(data, state)

            def initial_state(self: Any) -> Any:
                return state_class()

            ns["initial_state"] = initial_state
            ns["is_stateful"] = True
            ns["_quoll_state_class"] = state_class
            kind = "state_computation_multi" if multi else "state_computation"
        else:
            # (The two variants of comp differ in arity on purpose.)
            def comp(self: Any, data: Any) -> Any:  # type: ignore[misc]
                return func(data)

            ns["initial_state"] = None
            ns["is_stateful"] = False
            kind = "computation_multi" if multi else "computation"

        def name_method(self: Any) -> Any:
            return name

        ns["name"] = name_method
        ns["compute_multi" if multi else "compute"] = comp
        ns["_quoll_func"] = staticmethod(func)

    elif issubclass(base_cls, KeyExtractor):
        def extract_key(self: Any, data: Any) -> Any:
            res = func(data)
            if isinstance(res, int):
                return chr(res)
            return res

        ns["extract_key"] = extract_key
        ns["_quoll_func"] = staticmethod(func)
        kind = "key_extractor"

    elif issubclass(base_cls, Encoder):
        if issubclass(base_cls, ConnectorEncoder):
            def framed(data: Any, event_time: Any = 0,
                       key: Any = None) -> bytes:
                encoded = func(data)
                if isinstance(event_time, datetime.datetime):
                    event_time = int(dt_to_timestamp(event_time) * 1000)
                if isinstance(encoded, str):
                    encoded = encoded.encode("utf-8")
                encoded_key = _key_bytes(key)
                return struct.pack(
                    ">IqI{}s{}s".format(len(encoded_key), len(encoded)),
                    len(encoded) + 8 + len(encoded_key) + 8,
                    event_time,
                    len(encoded_key),
                    encoded_key,
                    encoded)

            def encode(self: Any, data: Any, event_time: Any = 0,
                       key: Any = None) -> bytes:
                return framed(data, event_time, key)

            def connector_framed(data: Any) -> bytes:
                return framed(data)

            ns["encode"] = encode
            # The worker-side semantics of ``encode(data)`` is the legacy
            # framed record, so the fast path gets the framing wrapper.
            ns["_quoll_func"] = staticmethod(connector_framed)
        else:
            # (The two variants of encode differ in arity on purpose.)
            def encode(self: Any, data: Any) -> Any:  # type: ignore[misc]
                return func(data)

            ns["encode"] = encode
            ns["_quoll_func"] = staticmethod(func)
        kind = "encoder"

    elif issubclass(base_cls, Decoder):
        if issubclass(base_cls, ConnectorDecoder):
            header_length = 4
            length_fmt = ">I"

            def decoder(self: Any) -> Callable[..., Any]:
                return func

            ns["decoder"] = decoder
        else:
            header_length = kwargs.get("header_length", 4)
            length_fmt = kwargs.get("length_fmt", ">I")

        def header_length_method(self: Any) -> int:
            return header_length

        def payload_length(self: Any, bs: bytes) -> int:
            return struct.unpack(length_fmt, bs)[0]

        def decode(self: Any, bs: bytes) -> Any:
            return func(bs)

        ns["header_length"] = header_length_method
        ns["payload_length"] = payload_length
        ns["decode"] = decode
        ns["_quoll_func"] = staticmethod(func)
        ns["_quoll_header_length"] = header_length
        ns["_quoll_length_fmt"] = length_fmt
        kind = "decoder"

    else:
        raise WallarooParameterError(
            "_wallaroo_wrap: unsupported base class {!r}".format(base_cls))

    ns["_quoll_kind"] = kind
    C = _make_class(base_cls, ns)

    with _attach_lock:
        _C[base_cls] += 1
        idx = _C[base_cls]
        return attach_to_module(C, base_cls.__name__, func, idx)


def _check_decorator_name(decorator: str, name: Any) -> None:
    if callable(name) and not isinstance(name, (str, bytes)):
        raise _api_error(
            "@wallaroo.{0} needs a step name: write @wallaroo.{0}(name=\"...\")"
            " above the function {1}.".format(decorator, _func_name(name)))


def computation(name: str) -> Callable[[Callable[[Any], Any]], Computation]:
    """Decorate ``f(data) -> output | None`` as a stateless computation."""
    _check_decorator_name("computation", name)

    def wrapped(func: Callable[[Any], Any]) -> Computation:
        _validate_arity_compatability(name, func, 1)
        C = _wallaroo_wrap(name, func, Computation)
        return C()
    return wrapped


def computation_multi(
        name: str) -> Callable[[Callable[[Any], Any]], ComputationMulti]:
    """Decorate ``f(data) -> list | None`` as a stateless computation that
    emits zero or more messages."""
    _check_decorator_name("computation_multi", name)

    def wrapped(func: Callable[[Any], Any]) -> ComputationMulti:
        _validate_arity_compatability(name, func, 1)
        C = _wallaroo_wrap(name, func, ComputationMulti)
        return C()
    return wrapped


def state_computation(
        name: str, state: Callable[[], Any]
) -> Callable[[Callable[[Any, Any], Any]], StateComputation]:
    """Decorate ``f(data, state) -> output | None``; ``state`` is a class (any
    zero-argument callable) creating the per-key state object."""
    _check_decorator_name("state_computation", name)

    def wrapped(func: Callable[[Any, Any], Any]) -> StateComputation:
        _validate_arity_compatability(name, func, 2)
        C = _wallaroo_wrap(name, func, StateComputation, state_class=state)
        return C()
    return wrapped


def state_computation_multi(
        name: str, state: Callable[[], Any]
) -> Callable[[Callable[[Any, Any], Any]], StateComputationMulti]:
    """Decorate ``f(data, state) -> list | None``."""
    _check_decorator_name("state_computation_multi", name)

    def wrapped(func: Callable[[Any, Any], Any]) -> StateComputationMulti:
        _validate_arity_compatability(name, func, 2)
        C = _wallaroo_wrap(name, func, StateComputationMulti,
                           state_class=state)
        return C()
    return wrapped


def key_extractor(func: Callable[[Any], Any]) -> KeyExtractor:
    """Decorate ``f(data) -> str | bytes | int``; an ``int`` result (including
    ``bool``) becomes ``chr(n)``."""
    _validate_arity_compatability(_func_name(func), func, 1)
    C = _wallaroo_wrap(_func_name(func), func, KeyExtractor)
    return C()


def _check_decoder_params(header_length: Any, length_fmt: Any) -> None:
    if isinstance(header_length, bool) or not isinstance(header_length, int):
        raise _api_error("decoder header_length must be an int, got {}."
                         .format(_describe(header_length)))
    if not isinstance(length_fmt, str):
        raise _api_error("decoder length_fmt must be a struct format string, "
                         "got {}.".format(_describe(length_fmt)))
    try:
        size = struct.calcsize(length_fmt)
    except struct.error as e:
        raise _api_error("decoder length_fmt {!r} is not a valid struct "
                         "format: {}.".format(length_fmt, e))
    if size != header_length:
        raise _api_error(
            "decoder length_fmt {!r} reads {} bytes but header_length is {}."
            .format(length_fmt, size, header_length))
    if not 1 <= header_length <= 8:
        raise _api_error("decoder header_length must be between 1 and 8, "
                         "got {}.".format(header_length))


@overload
def decoder(header_length: Callable[[bytes], Any]) -> OctetDecoder: ...


@overload
def decoder(header_length: int = 4, length_fmt: str = ">I"
            ) -> Callable[[Callable[[bytes], Any]], OctetDecoder]: ...


def decoder(
        header_length: Union[int, Callable[[bytes], Any]] = 4,
        length_fmt: str = ">I"
) -> Union[OctetDecoder, Callable[[Callable[[bytes], Any]], OctetDecoder]]:
    """Decorate ``f(payload: bytes) -> object | None`` as a framed decoder:
    each frame is a ``header_length``-byte header that ``length_fmt`` unpacks
    into the payload length, followed by the payload."""
    if callable(header_length) and not isinstance(header_length, int):
        # Used bare, as ``@wallaroo.decoder``: the documented defaults apply.
        return decoder()(header_length)
    _check_decoder_params(header_length, length_fmt)

    def wrapped(func: Callable[[bytes], Any]) -> OctetDecoder:
        _validate_arity_compatability(_func_name(func), func, 1)
        C = _wallaroo_wrap(_func_name(func), func, OctetDecoder,
                           header_length=header_length,
                           length_fmt=length_fmt)
        return C()
    return wrapped


def encoder(func: Callable[[Any], Any]) -> OctetEncoder:
    """Decorate ``f(data) -> bytes | str | None`` (TCP, connectors) or a
    ``(payload, key, partition)`` tuple (Kafka)."""
    _validate_arity_compatability(_func_name(func), func, 1)
    C = _wallaroo_wrap(_func_name(func), func, OctetEncoder)
    return C()
