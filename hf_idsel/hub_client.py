"""Hub client settings: connect and read timeouts on every Hub request hf_idsel makes on the user's behalf.

huggingface_hub (and `datasets` and `transformers` through it) sends every request through one shared
httpx client ([`huggingface_hub.get_session`]) that is created without a timeout, and most `HfApi` calls
(`create_repo`, `create_commit`, `repo_info`, ...) send none: a server that accepts a connection and never
answers holds the call forever. Inside [`hub_timeouts`], every request of that client waits at most
`connect` seconds for a connection and `read` seconds for each read (and write) on it; a stalled request
then fails with httpx's `TimeoutException`, which the push engine retries with back-off and reports as
[`PushError`] once the retries are spent.

The timeouts come from the `timeout` argument of the push functions, else the environment
(`HF_IDSEL_HUB_CONNECT_TIMEOUT`, `HF_IDSEL_HUB_READ_TIMEOUT`), else 10 s and 60 s. A request that sets a
shorter timeout of its own (`huggingface_hub`'s `HF_HUB_ETAG_TIMEOUT`, 10 s) keeps it.

How it is wired: huggingface_hub's supported hook is its client factory ([`huggingface_hub.set_client_factory`]).
The first [`hub_timeouts`] wraps the factory in place (keeping any factory the user set: proxies, certificates),
so that every client it makes carries a request hook that sets the timeouts. Outside a [`hub_timeouts`] block the
hook changes nothing: the user's own Hub calls keep huggingface_hub's behaviour.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass

from .errors import InvalidArgumentError

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a connection to the Hub."""

DEFAULT_READ_TIMEOUT = 60.0
"""Seconds to wait for each read (and write) on a connection to the Hub."""

CONNECT_TIMEOUT_ENV = "HF_IDSEL_HUB_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "HF_IDSEL_HUB_READ_TIMEOUT"

_lock = threading.Lock()
_active: list["HubTimeouts"] = []  # process-wide, not per thread: uploads run in huggingface_hub's worker threads


@dataclass(frozen=True)
class HubTimeouts:
    """Connect and read timeouts of Hub requests, in seconds.

    Args:
        connect (`float`):
            Seconds to wait for a connection.
        read (`float`):
            Seconds to wait for each read or write on a connection.
    """

    connect: float
    read: float

    @classmethod
    def resolve(cls, timeout=None, argument: str = "timeout") -> "HubTimeouts":
        """The timeouts `timeout` asks for: a number (both), a `(connect, read)` pair, a `HubTimeouts`, or `None`
        (the environment's `HF_IDSEL_HUB_CONNECT_TIMEOUT` / `HF_IDSEL_HUB_READ_TIMEOUT`, else 10 s / 60 s).

        Raises:
            [`InvalidArgumentError`]: a value that is not a positive, finite number of seconds, named by `argument`
                or by its environment variable.
        """
        if isinstance(timeout, HubTimeouts):
            return timeout
        if timeout is None:
            connect = _seconds(os.environ.get(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT), CONNECT_TIMEOUT_ENV)
            read = _seconds(os.environ.get(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT), READ_TIMEOUT_ENV)
            return cls(connect, read)
        if isinstance(timeout, (tuple, list)):
            if len(timeout) != 2:
                raise InvalidArgumentError(f"`{argument}`={timeout!r}: pass seconds, or a (connect, read) pair of seconds.")
            return cls(_seconds(timeout[0], argument), _seconds(timeout[1], argument))
        seconds = _seconds(timeout, argument)
        return cls(seconds, seconds)


def _seconds(value, name: str) -> float:
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidArgumentError(f"`{name}`={value!r} must be a positive number of seconds (e.g. 10).")
    return seconds


@contextlib.contextmanager
def hub_timeouts(timeout=None, argument: str = "timeout"):
    """Every Hub request of this process, in any thread, while the block runs gets connect and read timeouts.

    Args:
        timeout (`float`, `tuple[float, float]` or [`HubTimeouts`], *optional*):
            Seconds for both, or `(connect, read)`; default: the environment, else 10 s / 60 s (see the module).
        argument (`str`, *optional*, defaults to `"timeout"`):
            How an error names `timeout`.

    Yields:
        [`HubTimeouts`]: the timeouts in force.
    """
    timeouts = HubTimeouts.resolve(timeout, argument)
    _install()
    with _lock:
        _active.append(timeouts)
    try:
        yield timeouts
    finally:
        with _lock:
            _active.remove(timeouts)


def _limit_request(request) -> None:
    """httpx request hook: the timeouts of the innermost active [`hub_timeouts`], where the request has none or longer."""
    with _lock:
        timeouts = _active[-1] if _active else None
    if timeouts is None:
        return
    current = dict(request.extensions.get("timeout") or {})
    limits = {"connect": timeouts.connect, "read": timeouts.read, "write": timeouts.read, "pool": timeouts.connect}
    for key, limit in limits.items():
        value = current.get(key)
        current[key] = limit if value is None else min(float(value), limit)
    request.extensions = {**request.extensions, "timeout": current}


def _with_limits(client):
    hooks = dict(client.event_hooks)
    if _limit_request not in hooks.get("request", []):
        hooks["request"] = [*hooks.get("request", []), _limit_request]
        client.event_hooks = hooks
    return client


class _LimitedFactory:
    """huggingface_hub's client factory, wrapped: each client it makes carries [`_limit_request`]."""

    def __init__(self, factory) -> None:
        self.factory = factory

    def __call__(self):
        return _with_limits(self.factory())


def _install() -> None:
    from huggingface_hub import get_session, set_client_factory
    from huggingface_hub.utils import _http

    # huggingface_hub has a setter for its client factory and no getter: the wrapped factory is read from the
    # module that stores it, falling back to huggingface_hub's default one.
    with _lock:
        current = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory
        if not isinstance(current, _LimitedFactory):
            set_client_factory(_LimitedFactory(current))  # closes the shared client; the next one carries the hook
    _with_limits(get_session())
