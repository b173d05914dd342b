"""API errors, and the argument checks of the config classes that raise them.

Every misuse of the API is reported the way Wallaroo reported it: the line
``API_Error: <message>`` on stdout, then a :class:`WallarooParameterError`
carrying the same message.
"""

from typing import Any, Sequence


class WallarooParameterError(Exception):
    """Raised when the application uses the API incorrectly."""
    pass


def _api_error(message: str) -> WallarooParameterError:
    """Print ``API_Error: message`` like Wallaroo and build the exception to
    raise (the message is carried by the exception too)."""
    print("\nAPI_Error: " + message)
    return WallarooParameterError(message)


def _describe(obj: object) -> str:
    try:
        r = repr(obj)
    except Exception:
        r = "<unrepresentable {}>".format(type(obj).__name__)
    if len(r) > 200:
        r = r[:197] + "..."
    return "{} of type {}".format(r, type(obj).__name__)


def _port_str(port: Any, what: str) -> str:
    if isinstance(port, bool):
        raise _api_error("{} port must be a str or int, got {}."
                         .format(what, _describe(port)))
    if isinstance(port, int):
        return str(port)
    if isinstance(port, bytes):
        return port.decode("ascii")
    if isinstance(port, str):
        return port
    raise _api_error("{} port must be a str or int, got {}."
                     .format(what, _describe(port)))


def _require_methods(obj: object, methods: Sequence[str], what: str) -> None:
    missing = [m for m in methods if not callable(getattr(obj, m, None))]
    if missing:
        raise _api_error(
            "{} needs an object with method(s) {}; got {}. {}".format(
                what, ", ".join(m + "()" for m in missing), _describe(obj),
                "Use @wallaroo.decoder(...) / @wallaroo.encoder to make one."))
