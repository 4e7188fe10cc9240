"""The API reference, generated from the docstrings of the installed code.

``tradecache.docs.api_reference`` is built on first access by
:func:`build_api_reference`, so it always matches the code it documents:
every public method and property of the facade, the stores and the
coordination primitives (:data:`SURFACE`), with its signature and docstring.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import textwrap
from collections.abc import Callable, Iterator
from functools import cache, cached_property
from typing import Any

from .. import errors
from ..cache import Cache, Health
from ..config import ENV_PREFIX, Settings
from ..coordination.breaker import Breakers, BreakerState, CircuitBreaker, Transition
from ..coordination.events import EventBus
from ..coordination.idempotency import Idempotency, IdempotencyRecord
from ..coordination.lock import Fenced, Lease, Lock, LockHolder, LockManager
from ..coordination.state import SharedState, StateWatch, UpdateConflict
from ..coordination.subscription import Event, Gap, Subscription
from ..metrics import OperationStats
from ..models import (
    Balance,
    BotStatus,
    Candle,
    Exchange,
    Market,
    Order,
    Position,
    ProcessInfo,
    Ticker,
    Trade,
)
from ..stores.accounts import AccountCache
from ..stores.bots import BotCache, Claim, ClaimInfo
from ..stores.exchanges import ExchangeCache
from ..stores.ohlcv import OHLCVCache
from ..stores.orders import OrdersCache
from ..stores.processes import ProcessCache, SystemHealth
from ..stores.streams import Delivery
from ..stores.symbols import SymbolCache
from ..stores.ticker_writer import TickerWriter, WriterStats
from ..stores.tickers import TickCache
from ..stores.trades import TradesCache

__all__ = ["SURFACE", "build_api_reference", "public_members", "settings_fields", "signature"]

#: What the reference documents, in reading order: (how you reach it, class).
SURFACE: tuple[tuple[str, type], ...] = (
    ("Cache.connect(...) / tradecache.connect(...)", Cache),
    ("await cache.health()", Health),
    ("cache.stats()[operation]", OperationStats),
    ("cache.tickers", TickCache),
    ("async with cache.tickers.writer(...) as w", TickerWriter),
    ("cache.tickers.writer(...).stats()", WriterStats),
    ("cache.ohlcv", OHLCVCache),
    ("cache.orders", OrdersCache),
    ("cache.trades", TradesCache),
    ("async for delivery in cache.orders.consume(...) / cache.trades.consume(...)", Delivery),
    ("cache.accounts", AccountCache),
    ("cache.bots", BotCache),
    ("async with cache.bots.claim(...) as claim", Claim),
    ("await cache.bots.claims()", ClaimInfo),
    ("cache.processes", ProcessCache),
    ("await cache.processes.health()", SystemHealth),
    ("cache.exchanges", ExchangeCache),
    ("cache.symbols", SymbolCache),
    ("cache.events", EventBus),
    ("await cache.events.subscribe(...)", Subscription),
    ("an item of a Subscription", Event),
    ("an item of a Subscription: what could not be delivered", Gap),
    ("cache.state(name, ttl=None)", SharedState),
    ("cache.state(name).watch()", StateWatch),
    ("cache.lock(name, ...)", Lock),
    ("async with cache.lock(name) as lease", Lease),
    ("await cache.lock(name).holder()", LockHolder),
    ("cache.locks", LockManager),
    ("await cache.locks.fenced_get(key)", Fenced),
    ("cache.breaker(name, ...)", CircuitBreaker),
    ("cache.breaker(name).state", BreakerState),
    ("cache.breaker(name).on_change(listener)", Transition),
    ("cache.breakers", Breakers),
    ("cache.idempotency(scope, ...)", Idempotency),
    ("await cache.idempotency(scope).lookup(key)", IdempotencyRecord),
    ("Settings(...) / Cache.connect(url, **settings)", Settings),
    ("cache.tickers.get(...), Ticker.from_ccxt(d)", Ticker),
    ("cache.ohlcv.latest(...)", Candle),
    ("cache.orders.get(...)", Order),
    ("cache.trades.recent(...), delivery.item", Trade),
    ("cache.accounts.get_balance(...)", Balance),
    ("cache.accounts.get_position(...)", Position),
    ("cache.bots.get_status(...)", BotStatus),
    ("cache.processes.register(...)", ProcessInfo),
    ("cache.exchanges.get(...)", Exchange),
    ("cache.symbols.get(...)", Market),
)

_ERRORS: tuple[type[BaseException], ...] = (
    errors.TradecacheError,
    errors.ConnectionLost,
    errors.ValidationError,
    errors.ConfigError,
    errors.NotFound,
    errors.CommandError,
    errors.LockLost,
    errors.InProgress,
    errors.KeyReuse,
    errors.ReplayedFailure,
    errors.CircuitOpen,
    errors.Claimed,
    errors.WaitTimeout,
    UpdateConflict,
)


def _defined_here(cls: type, name: str) -> Any:
    """The raw attribute ``name`` if a tradecache class in ``cls``'s MRO defines it."""
    for klass in cls.__mro__:
        if name in vars(klass) and klass.__module__.startswith("tradecache"):
            return vars(klass)[name]
    return None


def public_members(cls: type) -> Iterator[tuple[str, Any]]:
    """``(name, raw attribute)`` of every public method and property tradecache defines.

    Methods are functions, classmethods and staticmethods; properties include
    ``cached_property``. Inherited members count when a tradecache class
    defines them; those of ``object``, ``str``, ``Enum``, pydantic and msgspec
    do not.

    Example::

        >>> from tradecache.stores.tickers import TickCache
        >>> "set_many" in dict(public_members(TickCache))
        True
    """
    for name in sorted(dir(cls)):
        if name.startswith("_"):
            continue
        raw = _defined_here(cls, name)
        if inspect.isfunction(raw) or isinstance(
            raw, staticmethod | classmethod | property | cached_property
        ):
            yield name, raw


def _function(raw: Any) -> Callable[..., Any]:
    if isinstance(raw, staticmethod | classmethod):
        return raw.__func__
    if isinstance(raw, property):
        return raw.fget  # type: ignore[return-value]  # public_members yields getters only
    if isinstance(raw, cached_property):
        return raw.func
    return raw  # type: ignore[no-any-return]


def _annotation(value: Any) -> str:
    if isinstance(value, str):
        return value
    return inspect.formatannotation(value)


def signature(raw: Any) -> str:
    """``(a: int, *, b: str = 'x') -> T`` of a method, without ``self``/``cls``.

    Example::

        >>> from tradecache.stores.tickers import TickCache
        >>> signature(vars(TickCache)["delete"])
        '(exchange: str, symbol: str) -> bool'
    """
    fn = _function(raw)
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if not isinstance(raw, staticmethod) and params and params[0].name in ("self", "cls"):
        params = params[1:]
    parts: list[str] = []
    star_done = False
    for index, param in enumerate(params):
        if param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        elif param.kind is param.VAR_POSITIONAL:
            star_done = True
        text = param.name
        if param.kind is param.VAR_POSITIONAL:
            text = "*" + text
        elif param.kind is param.VAR_KEYWORD:
            text = "**" + text
        if param.annotation is not param.empty:
            text += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            text += f" = {param.default!r}"
        parts.append(text)
        following = params[index + 1] if index + 1 < len(params) else None
        if param.kind is param.POSITIONAL_ONLY and (
            following is None or following.kind is not param.POSITIONAL_ONLY
        ):
            parts.append("/")
    result = f"({', '.join(parts)})"
    if sig.return_annotation is not sig.empty:
        result += f" -> {_annotation(sig.return_annotation)}"
    return result


def _kind(raw: Any) -> str:
    if isinstance(raw, property | cached_property):
        return "property"
    kind = "method"
    if isinstance(raw, classmethod):
        kind = "classmethod"
    elif isinstance(raw, staticmethod):
        kind = "staticmethod"
    fn = _function(raw)
    if inspect.iscoroutinefunction(fn):
        return "async " + kind
    if inspect.isasyncgenfunction(fn):
        return kind + " returning an async iterator"
    return kind


def _doc(obj: Any) -> str:
    return inspect.getdoc(obj) or "(no docstring)"


def settings_fields() -> list[str]:
    """One line per setting: name, type, default, environment variable, meaning.

    Example::

        >>> settings_fields()[1]
        "`namespace: str = 'tc'` (TRADECACHE_NAMESPACE): prefix of every key and channel"
    """
    lines = []
    for name, info in Settings.model_fields.items():
        variable = ENV_PREFIX + name.upper() + (" or REDIS_URL" if name == "url" else "")
        line = f"`{name}: {_annotation(info.annotation)} = {info.default!r}` ({variable})"
        lines.append(line + (f": {info.description}" if info.description else ""))
    return lines


def _fields(cls: type) -> list[str]:
    if issubclass(cls, enum.Enum):
        return [f"`{member.name} = {member.value!r}`" for member in cls]
    if issubclass(cls, Settings):
        return settings_fields()
    if dataclasses.is_dataclass(cls):
        return [
            f"`{field.name}: {_annotation(field.type)}`"
            for field in dataclasses.fields(cls)
            if not field.name.startswith("_")
        ]
    annotations: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("tradecache"):
            annotations.update(inspect.get_annotations(klass))
    return [
        f"`{name}: {_annotation(value)}`"
        for name, value in annotations.items()
        if not name.startswith("_") and "ClassVar" not in str(value)
    ]


def _section(where: str, cls: type) -> str:
    lines = [f"## {cls.__name__}  ({cls.__module__})", "", f"Reached as: `{where}`", ""]
    lines += [_doc(cls), ""]
    fields = _fields(cls)
    if fields:
        lines += ["Fields:", ""] + [f"* {field}" for field in fields] + [""]
    for name, raw in public_members(cls):
        kind = _kind(raw)
        if kind == "property":
            lines += [f"### {cls.__name__}.{name}  (property)", "", _doc(_function(raw)), ""]
            continue
        lines += [f"### {cls.__name__}.{name}{signature(raw)}  ({kind})", ""]
        lines += [_doc(_function(raw)), ""]
    return "\n".join(lines)


def _errors_section() -> str:
    lines = ["## Errors  (tradecache.errors)", "", _doc(errors), ""]
    for exc in _ERRORS:
        bases = ", ".join(base.__name__ for base in exc.__bases__)
        lines += [f"### {exc.__name__}({bases})", "", _doc(exc), ""]
    return "\n".join(lines)


@cache
def build_api_reference() -> str:
    """The reference text: every class of :data:`SURFACE`, then the errors.

    Built once per process from the docstrings and signatures of the code.

    Example::

        >>> "### TickCache.set(" in build_api_reference()
        True
    """
    header = textwrap.dedent(
        """\
        # tradecache API reference

        Generated from the docstrings and signatures of the installed code
        (`tradecache.docs.api`), so it cannot drift from it. Every call on a
        store or primitive is a coroutine unless it says otherwise; iterators
        are async iterators. Types in signatures are as annotated.
        """
    )
    sections = [header]
    sections += [_section(where, cls) for where, cls in SURFACE]
    sections.append(_errors_section())
    return "\n\n".join(sections).rstrip() + "\n"
