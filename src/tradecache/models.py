"""Typed models of the cached state: msgspec Structs that accept ccxt's unified dicts.

Every model converts from a ccxt structure through one path, :func:`convert`
(``Model.from_ccxt`` is a thin wrapper), and can also be built directly::

    from decimal import Decimal
    from tradecache.models import Order, Ticker

    t = Ticker.from_ccxt(ccxt_ticker, exchange="binance")   # camelCase ccxt dict
    o = Order(id="42", symbol="BTC/USDT", side="buy", amount=Decimal("0.5"))

Conventions (the contract other modules rely on):

* **Names.** Python attributes are snake_case; the wire and ``to_dict()`` use
  ccxt's camelCase (``bid_volume`` <-> ``bidVolume``). Dicts passed to
  :func:`convert` may use either spelling. Unknown keys (``info``,
  ``datetime`` ...) are ignored: the raw ``info`` payload is accepted, never
  stored.
* **Numbers.** Money state (:class:`Order`, :class:`Trade`, :class:`Fee`,
  :class:`Balance`, :class:`Position`) is :class:`~decimal.Decimal`; a float
  input becomes ``Decimal(str(x))``, never ``Decimal(x)``. Market data
  (:class:`Ticker`, :class:`Candle`, :class:`Market` precision, limits and fees)
  is ``float``. Inputs may be ``float``, ``int``, ``str``, ``Decimal`` or
  ``None``; ``bool`` is never a number.
* **Time.** Every timestamp is a timezone-aware UTC :class:`~datetime.datetime`
  truncated to the millisecond, and an ``int`` of epoch milliseconds on the wire.
  Inputs may be epoch milliseconds (int, integral float, digit string), an
  ISO-8601 string with an offset, or an *aware* datetime. A **naive datetime
  (or offset-less ISO string) is rejected**: guessing its zone is how orders end
  up an hour off. ccxt's ``datetime`` string is used only when ``timestamp`` is
  missing.
* **Validation.** Runs in ``__post_init__``, so it holds for ``from_ccxt``,
  direct construction, ``msgspec.structs.replace`` / :meth:`Model.replace` and
  decoding alike. Bad input raises :class:`tradecache.errors.ValidationError`
  whose ``field`` is the snake_case attribute name, dotted for nested values
  (``"fee.cost"``, ``"trades[0].price"``); ``"$"`` names the whole input. NaN
  and infinity are rejected everywhere; prices, amounts, volumes, costs,
  precision and limits must be >= 0, while ``change``, ``percentage``, PnL,
  notional, collateral, fee costs/rates and balances may be negative.
* **Models are frozen**: derive changed copies with :meth:`Model.replace`
  (or ``msgspec.structs.replace``), which re-validates.
* **Wire.** ``omit_defaults``: ``None`` fields, empty containers *and fields
  equal to their default* (``Order.status == "open"``,
  ``ProcessInfo.status == "starting"``, ``Exchange.enabled is True``,
  ``Market.type == "spot"``) are left out, so a reader (Lua included) must treat
  a missing key as the default. :class:`Candle` is encoded as the ccxt array
  ``[timestamp, open, high, low, close, volume, count]``. Encode and decode with
  :mod:`tradecache.codec`, which turns timestamps into epoch milliseconds.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from operator import attrgetter
from types import NoneType, UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Final,
    Self,
    TypeAlias,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

import msgspec

from tradecache.errors import ValidationError

__all__ = [
    "Balance",
    "BotStatus",
    "Candle",
    "Exchange",
    "Fee",
    "Market",
    "MarketLimits",
    "MarketPrecision",
    "MarketType",
    "MinMax",
    "Model",
    "Order",
    "OrderSide",
    "OrderStatus",
    "OrderType",
    "Position",
    "PositionSide",
    "ProcessInfo",
    "ProcessStatus",
    "TakerOrMaker",
    "Ticker",
    "Trade",
    "balances_from_ccxt",
    "convert",
    "dec_hook",
    "enc_hook",
    "from_ms",
    "to_ms",
    "translate_msgspec_error",
    "trusted",
    "utc_now",
]

M = TypeVar("M", bound="Model")

# --------------------------------------------------------------------------- time


class _UtcDateTime(datetime):
    """The runtime type of every model timestamp: aware UTC, millisecond precision.

    msgspec encodes a plain ``datetime`` natively (an RFC 3339 string); this
    subclass is unknown to it, so the codec's ``enc_hook`` turns it into epoch
    milliseconds and ``dec_hook`` turns those back. Models normalise any
    datetime they are given into it; users only ever see a ``datetime``.
    """

    __slots__ = ()


_EPOCH: Final = _UtcDateTime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_MAX_MS: Final = 253402300799999  # 9999-12-31T23:59:59.999Z

if TYPE_CHECKING:
    # Type checkers see a plain datetime, so `Ticker(timestamp=datetime.now(UTC))`
    # type-checks; at runtime msgspec sees the subclass and calls the hooks.
    Timestamp: TypeAlias = datetime
else:
    Timestamp = _UtcDateTime


def _from_ms(ms: int) -> _UtcDateTime:
    if not 0 <= ms <= _MAX_MS:
        raise ValueError(f"epoch milliseconds out of range [0, {_MAX_MS}]: {ms}")
    return _EPOCH + timedelta(milliseconds=ms)


def from_ms(ms: int) -> datetime:
    """Return the aware UTC datetime of ``ms`` epoch milliseconds (0 ... year 9999).

    Example::

        >>> from_ms(1700000000123).isoformat()
        '2023-11-14T22:13:20.123000+00:00'
    """
    return _from_ms(ms)


def to_ms(dt: datetime) -> int:
    """Return epoch milliseconds (floored) of an aware datetime; a naive one raises.

    Example::

        >>> to_ms(from_ms(1700000000123))
        1700000000123
    """
    if dt.utcoffset() is None:
        raise ValidationError(
            "datetime", "naive datetime: pass an aware one, e.g. datetime.now(UTC)"
        )
    return (dt - _EPOCH) // _ONE_MS


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime, truncated to the millisecond.

    Example::

        >>> utc_now().tzinfo
        datetime.timezone.utc
    """
    return _EPOCH + timedelta(milliseconds=time.time_ns() // 1_000_000)


def _to_utc(value: object) -> _UtcDateTime:
    """Normalise a timestamp input; raise ValueError/TypeError (msgspec wraps them)."""
    if type(value) is _UtcDateTime:
        return value
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError("naive datetime: pass an aware one, e.g. datetime.now(UTC)")
        return _from_ms((value - _EPOCH) // _ONE_MS)
    if isinstance(value, bool):
        raise TypeError("expected epoch milliseconds, got bool")
    if isinstance(value, int):
        return _from_ms(value)
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            raise ValueError(f"not a finite epoch milliseconds value: {value}")
        return _from_ms(int(value))
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return _from_ms(int(text))
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 datetime: {value!r}") from None
        return _to_utc(parsed)
    raise TypeError(
        "expected epoch milliseconds, an ISO-8601 string or an aware datetime, "
        f"got {type(value).__name__}"
    )


def enc_hook(obj: Any) -> Any:
    """msgspec ``enc_hook``: model timestamps become epoch milliseconds.

    Example::

        msgspec.json.Encoder(enc_hook=enc_hook).encode(ticker)
    """
    if type(obj) is _UtcDateTime:
        return (obj - _EPOCH) // _ONE_MS
    raise TypeError(f"cannot encode objects of type {type(obj).__name__}")


def dec_hook(type_: type, obj: Any) -> Any:
    """msgspec ``dec_hook``: epoch milliseconds (or ISO strings) become model timestamps.

    Example::

        msgspec.json.Decoder(Ticker, dec_hook=dec_hook).decode(data)
    """
    if type_ is _UtcDateTime:
        if type(obj) is int and 0 <= obj <= _MAX_MS:  # the wire's fast path
            return _EPOCH + timedelta(milliseconds=obj)
        return _to_utc(obj)
    raise TypeError(f"cannot decode into {type_!r}")


# --------------------------------------------------------------------------- enums


class _Choice(StrEnum):
    """A string enum that accepts case, ``-``/space spelling variants and aliases."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_").replace(" ", "_")
            key = _ENUM_ALIASES.get(cls.__name__, {}).get(key, key)
            return cls._value2member_map_.get(key)
        return None


class OrderSide(_Choice):
    """``buy`` or ``sell``.

    Example::

        >>> OrderSide("BUY") is OrderSide.BUY
        True
    """

    BUY = "buy"
    SELL = "sell"


class OrderType(_Choice):
    """ccxt order types (generous: exchange-specific stop/take-profit variants too).

    ``-`` and spaces are read as ``_`` and case is ignored.

    Example::

        >>> OrderType("stop-limit") is OrderType.STOP_LIMIT
        True
    """

    MARKET = "market"
    LIMIT = "limit"
    LIMIT_MAKER = "limit_maker"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    STOP_MARKET = "stop_market"
    STOP_LOSS = "stop_loss"
    STOP_LOSS_LIMIT = "stop_loss_limit"
    TAKE_PROFIT = "take_profit"
    TAKE_PROFIT_LIMIT = "take_profit_limit"
    TAKE_PROFIT_MARKET = "take_profit_market"
    TRAILING_STOP = "trailing_stop"
    TRAILING_STOP_LIMIT = "trailing_stop_limit"
    TRAILING_STOP_MARKET = "trailing_stop_market"
    MARKET_IF_TOUCHED = "market_if_touched"
    LIMIT_IF_TOUCHED = "limit_if_touched"
    OCO = "oco"
    LIQUIDATION = "liquidation"


class OrderStatus(_Choice):
    """Order life-cycle states; ``cancelled`` is read as ``canceled``.

    Exchange spellings ``filled`` (-> closed) and ``partially_filled`` (-> open)
    are accepted too.

    Example::

        >>> OrderStatus("cancelled") is OrderStatus.CANCELED
        True
        >>> OrderStatus.CANCELED.is_terminal
        True
    """

    NEW = "new"
    PENDING = "pending"
    OPEN = "open"
    CLOSED = "closed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def is_terminal(self) -> bool:
        """True for closed, canceled, expired and rejected: the order will not change.

        Example::

            >>> OrderStatus.OPEN.is_terminal
            False
        """
        return self in _TERMINAL


_TERMINAL: Final = frozenset(
    {OrderStatus.CLOSED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)


class TakerOrMaker(_Choice):
    """Liquidity side of a fill.

    Example::

        >>> TakerOrMaker("maker")
        <TakerOrMaker.MAKER: 'maker'>
    """

    TAKER = "taker"
    MAKER = "maker"


class PositionSide(_Choice):
    """Direction of a position (``contracts`` is always >= 0).

    Example::

        >>> PositionSide("SHORT") is PositionSide.SHORT
        True
    """

    LONG = "long"
    SHORT = "short"


class MarketType(_Choice):
    """ccxt market types.

    Example::

        >>> MarketType("swap") is MarketType.SWAP
        True
    """

    SPOT = "spot"
    MARGIN = "margin"
    SWAP = "swap"
    FUTURE = "future"
    OPTION = "option"
    DELIVERY = "delivery"
    INDEX = "index"


class ProcessStatus(_Choice):
    """State of a registered process, reported by its heartbeats.

    Example::

        >>> ProcessStatus("running") is ProcessStatus.RUNNING
        True
    """

    STARTING = "starting"
    RUNNING = "running"
    PROCESSING = "processing"
    IDLE = "idle"
    ERROR = "error"
    STOPPED = "stopped"


_ENUM_ALIASES: Final[dict[str, dict[str, str]]] = {
    "OrderStatus": {"cancelled": "canceled", "filled": "closed", "partially_filled": "open"},
}


# --------------------------------------------------------------------------- field rules


class _Rule:
    """A validation marker carried in ``Annotated`` metadata (msgspec ignores it)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NONNEG: Final = _Rule("NONNEG")  # number >= 0
_POSITIVE: Final = _Rule("POSITIVE")  # number > 0
_NONEMPTY: Final = _Rule("NONEMPTY")  # str != ""

Num: TypeAlias = float  # market data, finite, may be negative
Price: TypeAlias = Annotated[float, _NONNEG]  # market data, finite, >= 0
Money: TypeAlias = Decimal  # money, finite, may be negative
Amount: TypeAlias = Annotated[Decimal, _NONNEG]  # money, finite, >= 0
PositiveAmount: TypeAlias = Annotated[Decimal, _POSITIVE]  # money, finite, > 0
Count: TypeAlias = Annotated[int, _NONNEG]
Id: TypeAlias = Annotated[str, _NONEMPTY]

_dec_is_finite = Decimal.is_finite


class _Field:
    """How one field is validated: its kind, base type, optionality and rules."""

    __slots__ = ("allowed", "field_type", "kind", "name", "nonempty", "nonneg", "positive", "tp")

    def __init__(self, name: str, annotation: Any) -> None:
        tp, optional, rules = _unwrap(annotation)
        self.name = name
        self.field_type = tp  # what msgspec.convert builds a nested value as
        if isinstance(tp, type) and issubclass(tp, _Choice):
            kind = "enum"
        elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            kind = "struct"
        elif get_origin(tp) is tuple:
            kind, tp = "tuple", get_args(tp)[0]  # tp: the element type
        else:
            kind = _KINDS[get_origin(tp) or tp]
        self.kind = kind
        self.tp = tp
        self.nonneg = "NONNEG" in rules
        self.positive = "POSITIVE" in rules
        self.nonempty = "NONEMPTY" in rules
        base = tuple if kind == "tuple" else get_origin(tp) or tp
        self.allowed = frozenset({base, NoneType} if optional else {base})

    @property
    def order(self) -> int:
        """Sort key grouping the fields whose values the fast path checks together."""
        if self.kind == "str":
            return 0 if self.nonempty else 9
        if self.kind == "float":
            return 1 if self.nonneg else 2
        if self.kind == "dec":
            return 3 if self.positive else 4 if self.nonneg else 5
        if self.kind == "int":
            return 6
        return 7 if self.kind == "tuple" else 9


def _reject(name: str, reason: str) -> ValidationError:
    return ValidationError(name, reason)


def _coerce(group: _Field, name: str, value: Any) -> Any:
    """Validate one value of a field; return it, or a normalised replacement."""
    if value is None:
        if NoneType in group.allowed:
            return None
        raise _reject(name, "required")
    kind = group.kind
    if kind == "str":
        if not isinstance(value, str):
            raise _reject(name, f"expected str, got {type(value).__name__}")
        if group.nonempty and not value:
            raise _reject(name, "must not be empty")
        return value if type(value) is str else str(value)
    if kind == "time":
        try:
            return _to_utc(value)
        except (TypeError, ValueError) as exc:
            raise _reject(name, str(exc)) from None
    if kind == "enum":
        return _coerce_enum(group.tp, value, name)
    if kind == "bool":
        if type(value) is bool:
            return value
        raise _reject(name, f"expected bool, got {type(value).__name__}")
    if kind in ("float", "dec", "int"):
        return _check_number(group, name, _to_number(kind, name, value))
    # struct, tuple of structs, dict: let msgspec build it from plain data
    try:
        return msgspec.convert(value, group.field_type, strict=False, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise translate_msgspec_error(exc, None, prefix=name) from None


def _to_number(kind: str, name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise _reject(name, f"expected a number, got {type(value).__name__}")
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            if isinstance(value, int):
                return int(value)
            raise _reject(name, f"expected an int, got {type(value).__name__}")
        if isinstance(value, float):
            return Decimal(str(value))  # never Decimal(x): that exposes binary noise
        return Decimal(value.strip() if isinstance(value, str) else value)
    except (ValueError, InvalidOperation):
        raise _reject(name, f"not a number: {value!r}") from None


def _check_number(group: _Field, name: str, number: Any) -> Any:
    finite = number.is_finite() if isinstance(number, Decimal) else math.isfinite(number)
    if not finite:
        raise _reject(name, f"must be finite, got {number}")
    if group.positive and not number > 0:
        raise _reject(name, f"must be > 0, got {number}")
    if group.nonneg and number < 0:
        raise _reject(name, f"must be >= 0, got {number}")
    return number


def _coerce_enum(enum: type[_Choice], value: Any, name: str) -> Any:
    if type(value) is enum:
        return value
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    allowed = ", ".join(m.value for m in enum)
    raise _reject(name, f"{value!r} is not a valid {enum.__name__} (one of: {allowed})")


_KINDS: Final[dict[Any, str]] = {
    str: "str",
    float: "float",
    Decimal: "dec",
    int: "int",
    bool: "bool",
    _UtcDateTime: "time",
    dict: "dict",
}


def _unwrap(tp: Any) -> tuple[Any, bool, frozenset[str]]:
    """Return (base type, optional, rule names) of a field annotation."""
    rules: set[str] = set()
    optional = False
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp, *meta = get_args(tp)
            rules.update(m.name for m in meta if isinstance(m, _Rule))
        elif origin is Union or origin is UnionType:
            args = [a for a in get_args(tp) if a is not NoneType]
            optional = True
            tp = args[0]  # models never use unions other than `X | None`
        else:
            return tp, optional, frozenset(rules)


class _Meta:
    """Per-model metadata for validation and ccxt conversion, built once per class."""

    def __init__(self, cls: type[Model]) -> None:
        hints = get_type_hints(cls, include_extras=True)
        fields = msgspec.structs.fields(cls)
        self.names = tuple(f.name for f in fields)
        self.wire = tuple(f.encode_name for f in fields)
        self.wire_of = {f.name: f.encode_name for f in fields}
        self.snake_of = {f.encode_name: f.name for f in fields}
        self.snake = {f.name: f.encode_name for f in fields if f.name != f.encode_name}
        self.required = tuple(f.encode_name for f in fields if f.required)
        # None in a ccxt dict for a field with a non-None default means "use the default"
        self.defaulted = tuple(
            f.encode_name
            for f in fields
            if not f.required and not (f.default is None and f.default_factory is msgspec.NODEFAULT)
        )
        self.array_like = cls.__struct_config__.array_like
        self.iso = tuple((self.wire_of[a], b) for a, b in cls._iso_fallback)
        self.stamps = tuple(self.wire_of[n] for n in cls._stamped)
        specs = sorted((_Field(f.name, hints[f.name]) for f in fields), key=lambda f: f.order)
        self.enums = tuple((self.wire_of[f.name], f.name, f.tp) for f in specs if f.kind == "enum")
        self.specs = tuple(specs)
        orders = [f.order for f in specs]

        def part(*codes: int) -> slice:
            hits = [i for i, code in enumerate(orders) if code in codes]
            return slice(hits[0], hits[-1] + 1) if hits else slice(0, 0)

        self.s_nonempty, self.s_float, self.s_float_nn = part(0), part(1, 2), part(1)
        self.s_dec, self.s_dec_pos, self.s_dec_nn = part(3, 4, 5), part(3), part(3, 4)
        self.s_int, self.s_tuple = part(6), part(7)
        self.tuple_types = tuple(f.tp for f in specs if f.kind == "tuple")
        names = [f.name for f in specs]
        self.get: Callable[[Any], tuple[Any, ...]] = (
            attrgetter(*names) if len(names) > 1 else lambda obj: (getattr(obj, names[0]),)
        )
        # type signatures (tuple of value types) already proven valid: one set lookup
        # replaces a per-field isinstance walk on every construction and decode
        self.good_types: set[tuple[type, ...]] = set()

    def check(self, obj: Model) -> None:
        """Validate ``obj`` in place; fast path first, per-field path when it fails."""
        vals = self.get(obj)
        if tuple(map(type, vals)) in self.good_types and self._values_ok(vals):
            return
        for spec, value in zip(self.specs, vals, strict=True):
            fixed = _coerce(spec, spec.name, value)
            if fixed is not value:
                msgspec.structs.force_setattr(obj, spec.name, fixed)
        if len(self.good_types) < 1024:  # bounded: optional fields make a few combinations
            self.good_types.add(tuple(map(type, self.get(obj))))

    def _values_ok(self, vals: tuple[Any, ...]) -> bool:
        """Value rules over groups of fields at C speed; types are already known good."""
        if self.s_nonempty.stop and "" in vals[self.s_nonempty]:
            return False
        # filter(None) drops None and zeros, which satisfy every number rule
        if self.s_float.stop:
            floats = [*filter(None, vals[self.s_float])]
            if floats and not math.isfinite(sum(floats)):
                return False
            if min(filter(None, vals[self.s_float_nn]), default=0.0) < 0:
                return False
        if self.s_dec.stop:
            if not all(map(_dec_is_finite, filter(None, vals[self.s_dec]))):
                return False
            if min(filter(None, vals[self.s_dec_nn]), default=0) < 0:
                return False
            if min(vals[self.s_dec_pos], default=1) <= 0:
                return False
        if self.s_int.stop and min(filter(None, vals[self.s_int]), default=0) < 0:
            return False
        return not self.s_tuple.stop or all(
            all(type(x) is elem for x in items)
            for elem, items in zip(self.tuple_types, vals[self.s_tuple], strict=True)
        )


_METAS: dict[type, _Meta] = {}


def _meta(cls: type[Model]) -> _Meta:
    meta = _METAS.get(cls)
    if meta is None:
        meta = _METAS[cls] = _Meta(cls)
    return meta


# --------------------------------------------------------------------------- errors

_AT: Final = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING: Final = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_SEGMENT: Final = re.compile(r"\.([^.\[]+)|\[([^\]]*)\]")
_UPPER: Final = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _snake(name: str) -> str:
    return _UPPER.sub(r"_\1", name).lower()


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def _path_field(path: str, model: type[Model] | None) -> str:
    """``.trades[0].stopPrice`` -> ``trades[0].stop_price``; root array index -> name."""
    out = ""
    for i, match in enumerate(_SEGMENT.finditer(path)):
        key, index = match.groups()
        if key is not None:
            out = _join(out, _snake(key))
        elif i == 0 and model is not None and _meta(model).array_like and index.isdigit():
            out = _join(out, _meta(model).names[int(index)])  # array-like model
        else:
            out += f"[{index}]"
    return out


def translate_msgspec_error(
    exc: msgspec.ValidationError,
    model: type[Model] | None = None,
    *,
    prefix: str = "",
    error: type[ValidationError] = ValidationError,
) -> ValidationError:
    """Turn a ``msgspec.ValidationError`` into ``error(field, reason)``.

    The field is msgspec's path in snake_case (``$.fee.cost`` -> ``fee.cost``;
    a root array index of an array-like ``model`` -> its field name); an error
    raised by a model's validation keeps its own field; ``"$"`` when there is
    no path.

    Example::

        try:
            msgspec.json.decode(data, type=Ticker, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            raise translate_msgspec_error(exc, Ticker) from None
    """
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any string
    reason = match["reason"]
    field = _join(prefix, _path_field(match["path"] or "", model))
    cause = exc.__cause__
    if isinstance(cause, ValidationError):  # raised by a __post_init__
        return error(_join(field, cause.field), cause.reason)
    missing = _MISSING.match(reason)
    if missing:
        return error(_join(field, _snake(missing["name"])), "required")
    return error(field or "$", reason)


# --------------------------------------------------------------------------- base

trusted: Final[ContextVar[bool]] = ContextVar("tradecache_trusted", default=False)
"""True while :mod:`tradecache.codec` decodes stored bytes: models skip value checks.

Stored data was validated when it was written, and msgspec still checks every
type and shape while decoding; skipping the Python-level value rules keeps a
ticker decode near 2 µs instead of 4. A ``ContextVar``, so a model built
concurrently in another thread or task is still validated. Tests and tools
can force validation of decoded data with ``Codec(name, validate=True)``.
"""


class Model(
    msgspec.Struct,
    kw_only=True,
    frozen=True,
    rename="camel",
    omit_defaults=True,
):
    """Base of every tradecache model: validation, ccxt conversion, dict views.

    Example::

        t = Ticker.from_ccxt({"symbol": "BTC/USDT", "bid": 1.0}, exchange="binance")
        t.to_dict()      # {'symbol': 'BTC/USDT', 'exchange': 'binance', ...}
        t.replace(bid=2.0)
    """

    # ccxt key holding an ISO string to use when the timestamp key is missing
    _iso_fallback: ClassVar[tuple[tuple[str, str], ...]] = ()
    # fields set to "now" by convert() when absent
    _stamped: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if trusted.get():  # the codec decoding bytes that were validated when written
            return
        meta = _METAS.get(type(self)) or _meta(type(self))
        meta.check(self)
        self._check()

    def _check(self) -> None:
        """Cross-field rules of a model; fields are already type-checked and normalised."""

    @classmethod
    def from_ccxt(cls, data: Any, /, **extra: Any) -> Self:
        """Build (and validate) a model from a ccxt dict, a compatible dict or a model.

        ``extra`` fills fields the data lacks (``exchange=``, ``currency=`` ...);
        a different non-None value already in the data raises ValidationError.

        Example::

            order = Order.from_ccxt(await exchange.watch_orders()[-1], exchange="binance")
        """
        return convert(data, cls, **extra)

    def to_dict(self) -> dict[str, Any]:
        """Return the camelCase wire-shaped dict (defaults omitted, times in epoch ms).

        Decimals stay Decimal and enums become their string values.

        Example::

            >>> Fee(cost=Decimal("0.1"), currency="BNB").to_dict()
            {'currency': 'BNB', 'cost': Decimal('0.1')}
        """
        out = msgspec.to_builtins(self, enc_hook=enc_hook, builtin_types=(Decimal,))
        if isinstance(out, list):  # an array-like model (Candle)
            return dict(zip(type(self).__struct_encode_fields__, out, strict=True))
        return cast(dict[str, Any], out)

    def to_ccxt(self) -> dict[str, Any]:
        """Return a ccxt-style dict: every camelCase field (``None`` included).

        Like ccxt, a ``timestamp`` comes with its ISO-8601 ``datetime`` string.

        Example::

            >>> Ticker(symbol="BTC/USDT", timestamp=from_ms(0)).to_ccxt()["datetime"]
            '1970-01-01T00:00:00.000Z'
        """
        out: dict[str, Any] = {}
        for name, wire in zip(
            type(self).__struct_fields__, type(self).__struct_encode_fields__, strict=True
        ):
            out[wire] = msgspec.to_builtins(
                getattr(self, name), enc_hook=enc_hook, builtin_types=(Decimal,)
            )
        for ts, iso in self._iso_fallback:
            value = getattr(self, ts)
            out[iso] = None if value is None else _iso(value)
        return out

    def replace(self, **changes: Any) -> Self:
        """Return a validated copy with ``changes`` applied (snake_case names).

        Example::

            filled = order.replace(status=OrderStatus.CLOSED, filled=order.amount)
        """
        return msgspec.structs.replace(self, **changes)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- conversion


def convert(data: Any, model: type[M], /, **extra: Any) -> M:
    """Convert ccxt data (or a model instance) into ``model``, validated.

    ``data`` may be a ccxt dict (camelCase; snake_case keys work too), the ccxt
    list form for :class:`Candle`, or an instance of ``model`` (returned as is,
    or a copy when ``extra`` fills a missing field). ``extra`` values fill
    fields the data lacks; a conflicting non-None value raises
    :class:`ValidationError`. ``None`` for a field with a default (``status``)
    means that default. Time stamps a model sets on arrival (``Ticker.received``,
    ``Balance.updated``, ``ProcessInfo.started``/``updated``) are set to now when
    absent.

    Example::

        ticker = convert(ccxt_ticker, Ticker, exchange="binance")
        same = convert(ticker, Ticker)   # a model passes through
    """
    meta = _METAS.get(model) or _meta(model)
    if isinstance(data, model):
        return _fill_instance(data, meta, extra)
    if isinstance(data, Model):
        raise ValidationError("$", f"expected {model.__name__}, got {type(data).__name__}")
    fill = False
    if isinstance(data, Mapping):
        data = _prepare(data, meta, extra)
    else:  # the ccxt list form of a Candle, or garbage msgspec will name
        fill = bool(extra or meta.stamps)
    try:
        obj = msgspec.convert(data, model, strict=False, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise translate_msgspec_error(exc, model) from None
    return _fill_instance(obj, meta, extra) if fill else obj


def _fill_instance(obj: M, meta: _Meta, extra: Mapping[str, Any]) -> M:
    changes: dict[str, Any] = {}
    for name, value in extra.items():
        if name not in meta.wire_of:
            raise ValidationError(name, f"unknown field of {type(obj).__name__}")
        current = getattr(obj, name)
        if current is None:
            if value is not None:
                changes[name] = value
        elif value is not None and current != value:
            raise ValidationError(name, f"conflicting values {current!r} and {value!r}")
    for wire in meta.stamps:
        name = meta.snake_of[wire]
        if getattr(obj, name) is None and changes.get(name) is None:
            changes[name] = utc_now()
    return msgspec.structs.replace(obj, **changes) if changes else obj


def _prepare(data: Mapping[str, Any], meta: _Meta, extra: Mapping[str, Any]) -> Any:
    """Shape a ccxt mapping for msgspec; copies the caller's dict only when it must."""
    out: dict[str, Any] = data if type(data) is dict else dict(data)
    own = out is not data
    if meta.snake and not out.keys().isdisjoint(meta.snake):
        out, own = dict(out), True
        for snake, wire in meta.snake.items():
            if snake in out:
                value = out.pop(snake)
                if out.get(wire) is None:
                    out[wire] = value
    for ts, iso in meta.iso:
        if out.get(ts) is None and out.get(iso) is not None:
            if not own:
                out, own = dict(out), True
            out[ts] = out[iso]
    for wire in meta.defaulted:
        if wire in out and out[wire] is None:
            if not own:
                out, own = dict(out), True
            del out[wire]
    for wire, name, enum in meta.enums:
        value = out.get(wire)
        if type(value) is str and value not in enum._value2member_map_:
            if not own:
                out, own = dict(out), True
            out[wire] = _coerce_enum(enum, value, name).value
    for name, value in extra.items():
        if name not in meta.wire_of:
            raise ValidationError(name, "unknown field")
        if value is None:
            continue
        wire = meta.wire_of[name]
        current = out.get(wire)
        if current is None:
            if not own:
                out, own = dict(out), True
            out[wire] = value
        elif current != value:
            raise ValidationError(name, f"conflicting values {current!r} and {value!r}")
    for wire in meta.stamps:
        if out.get(wire) is None:
            if not own:
                out, own = dict(out), True
            out[wire] = utc_now()
    if meta.array_like:
        for wire in meta.required:
            if out.get(wire) is None:
                raise ValidationError(meta.snake_of[wire], "required")
        return [out.get(wire) for wire in meta.wire]
    return out


# --------------------------------------------------------------------------- market data


class Ticker(Model, frozen=True, gc=False):
    """Latest market snapshot of one symbol on one exchange (ccxt ``Ticker``).

    ``received`` is when tradecache got it (set by :func:`convert` when absent);
    ``timestamp`` is the exchange's time. The tickers store rejects crossed
    books; this model only offers the helpers.

    Example::

        t = Ticker.from_ccxt(await ex.watch_ticker("BTC/USDT"), exchange="binance")
        t.mid, t.spread, t.price
    """

    symbol: Id
    exchange: Id | None = None
    timestamp: Timestamp | None = None
    received: Timestamp | None = None
    bid: Price | None = None
    bid_volume: Price | None = None
    ask: Price | None = None
    ask_volume: Price | None = None
    last: Price | None = None
    open: Price | None = None
    high: Price | None = None
    low: Price | None = None
    close: Price | None = None
    previous_close: Price | None = None
    change: Num | None = None
    percentage: Num | None = None
    average: Price | None = None
    vwap: Price | None = None
    base_volume: Price | None = None
    quote_volume: Price | None = None
    index_price: Price | None = None
    mark_price: Price | None = None

    _iso_fallback: ClassVar[tuple[tuple[str, str], ...]] = (("timestamp", "datetime"),)
    _stamped: ClassVar[tuple[str, ...]] = ("received",)

    @property
    def mid(self) -> float | None:
        """``(bid + ask) / 2``, or None without both sides.

        Example::

            >>> Ticker(symbol="X", bid=1.0, ask=3.0).mid
            2.0
        """
        if self.bid is None or self.ask is None:
            return None
        return (self.bid + self.ask) / 2

    @property
    def spread(self) -> float | None:
        """``ask - bid`` (negative when the book is crossed), or None without both sides.

        Example::

            >>> Ticker(symbol="X", bid=1.0, ask=3.0).spread
            2.0
        """
        if self.bid is None or self.ask is None:
            return None
        return self.ask - self.bid

    @property
    def price(self) -> float | None:
        """Best single price: ``last``, else ``close``, else :attr:`mid`.

        Example::

            >>> Ticker(symbol="X", bid=1.0, ask=3.0).price
            2.0
        """
        if self.last is not None:
            return self.last
        if self.close is not None:
            return self.close
        return self.mid

    def age(self, now: datetime | None = None) -> float | None:
        """Seconds since tradecache received the ticker (else since its exchange timestamp).

        ``received`` is on the local clock, so a skewed exchange clock or an exchange
        that stamps tickers with its last trade time cannot make a live feed look stale.
        None when the ticker carries neither time.

        Example::

            >>> t = Ticker(symbol="X", received=from_ms(1_000))
            >>> t.age(now=from_ms(3_500))
            2.5
        """
        stamp = self.received if self.received is not None else self.timestamp
        if stamp is None:
            return None
        return ((now or utc_now()) - stamp).total_seconds()

    def is_stale(self, max_age: float | timedelta, now: datetime | None = None) -> bool:
        """True when :meth:`age` exceeds ``max_age`` (seconds), or is unknown.

        ``cache.tickers.is_stale(t)`` applies the ``stale_after`` setting.

        Example::

            >>> Ticker(symbol="X", received=from_ms(0)).is_stale(30, now=from_ms(31_000))
            True
        """
        age = self.age(now)
        limit = max_age.total_seconds() if isinstance(max_age, timedelta) else max_age
        return age is None or age > limit


class Candle(Model, frozen=True, gc=False, array_like=True):
    """One OHLCV(C) bar; on the wire the ccxt array ``[ts, o, h, l, c, v, count]``.

    Accepts ccxt's list form as well as a dict. ``high`` must be >= open and
    close, ``low`` <= open and close, all values >= 0.

    Example::

        bars = [Candle.from_ccxt(row) for row in await ex.fetch_ohlcv("BTC/USDT", "1m")]
        bars[0].to_list()   # [1700000000000, 1.0, 2.0, 0.5, 1.5, 10.0]
    """

    timestamp: Timestamp
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Price | None = None
    count: Count | None = None

    _iso_fallback: ClassVar[tuple[tuple[str, str], ...]] = (("timestamp", "datetime"),)

    def _check(self) -> None:
        if self.high < max(self.open, self.close):
            raise ValidationError("high", f"{self.high} is below open/close")
        if self.low > min(self.open, self.close):
            raise ValidationError("low", f"{self.low} is above open/close")

    def to_list(self) -> list[Any]:
        """Return ccxt's OHLCV list ``[ms, open, high, low, close, volume]`` (+ count if set).

        Example::

            >>> Candle.from_ccxt([0, 1, 2, 0.5, 1.5, 10]).to_list()
            [0, 1.0, 2.0, 0.5, 1.5, 10.0]
        """
        row: list[Any] = [to_ms(self.timestamp), self.open, self.high, self.low, self.close]
        row.append(self.volume)
        if self.count is not None:
            row.append(self.count)
        return row


class MinMax(Model, frozen=True, gc=False):
    """A ``{min, max}`` limit of a market (floats, >= 0).

    Example::

        >>> MinMax(min=0.001).min
        0.001
    """

    min: Price | None = None
    max: Price | None = None


class MarketPrecision(Model, frozen=True, gc=False):
    """ccxt ``market["precision"]``: tick sizes or decimal places, per the exchange's mode.

    Example::

        >>> MarketPrecision(amount=0.001, price=0.01).price
        0.01
    """

    amount: Price | None = None
    price: Price | None = None
    cost: Price | None = None
    base: Price | None = None
    quote: Price | None = None


class MarketLimits(Model, frozen=True, gc=False):
    """ccxt ``market["limits"]``.

    Example::

        >>> MarketLimits(amount=MinMax(min=0.001)).amount.min
        0.001
    """

    amount: MinMax = msgspec.field(default_factory=MinMax)
    price: MinMax = msgspec.field(default_factory=MinMax)
    cost: MinMax = msgspec.field(default_factory=MinMax)
    leverage: MinMax = msgspec.field(default_factory=MinMax)
    market: MinMax = msgspec.field(default_factory=MinMax)


class Market(Model, frozen=True):
    """A ccxt market (``load_markets()`` value): symbol metadata, precision, limits, fees.

    Example::

        markets = {s: Market.from_ccxt(m, exchange="binance")
                   for s, m in (await ex.load_markets()).items()}
        markets["BTC/USDT"].precision.amount
    """

    id: Id
    symbol: Id
    base: Id
    quote: Id
    exchange: Id | None = None
    base_id: str | None = None
    quote_id: str | None = None
    settle: str | None = None
    settle_id: str | None = None
    type: MarketType = MarketType.SPOT
    sub_type: str | None = None
    active: bool | None = None
    spot: bool | None = None
    margin: bool | None = None
    swap: bool | None = None
    future: bool | None = None
    option: bool | None = None
    contract: bool | None = None
    linear: bool | None = None
    inverse: bool | None = None
    contract_size: Price | None = None
    expiry: Timestamp | None = None
    strike: Price | None = None
    option_type: str | None = None
    taker: Num | None = None
    maker: Num | None = None
    percentage: bool | None = None
    tier_based: bool | None = None
    fee_side: str | None = None
    precision: MarketPrecision = msgspec.field(default_factory=MarketPrecision)
    limits: MarketLimits = msgspec.field(default_factory=MarketLimits)
    created: Timestamp | None = None

    _iso_fallback: ClassVar[tuple[tuple[str, str], ...]] = (("expiry", "expiryDatetime"),)


# --------------------------------------------------------------------------- money state


class Fee(Model, frozen=True, gc=False):
    """A ccxt fee ``{currency, cost, rate}``; cost and rate may be negative (rebates).

    Example::

        >>> Fee.from_ccxt({"cost": 0.1, "currency": "BNB"}).cost
        Decimal('0.1')
    """

    currency: str | None = None
    cost: Money | None = None
    rate: Money | None = None


class Trade(Model, frozen=True):
    """One fill (ccxt ``Trade``): public trades and your own (``order`` set).

    Example::

        trades = [Trade.from_ccxt(t, exchange="binance") for t in await ex.watch_my_trades()]
    """

    symbol: Id
    price: Amount
    amount: Amount
    id: Id | None = None
    exchange: Id | None = None
    order: Id | None = None
    timestamp: Timestamp | None = None
    side: OrderSide | None = None
    type: OrderType | None = None
    taker_or_maker: TakerOrMaker | None = None
    cost: Amount | None = None
    fee: Fee | None = None
    fees: tuple[Fee, ...] = ()

    _iso_fallback: ClassVar[tuple[tuple[str, str], ...]] = (("timestamp", "datetime"),)


class Order(Model, frozen=True):
    """An order (ccxt ``Order``): ``id`` non-empty, ``amount`` > 0, prices >= 0.

    ``status`` defaults to ``open`` (also when ccxt says ``None``).

    Example::

        order = Order.from_ccxt(await ex.create_order("BTC/USDT", "limit", "buy", 1, 100),
                                exchange="binance")
        order.is_terminal
    """

    id: Id
    symbol: Id
    side: OrderSide
    amount: PositiveAmount
    exchange: Id | None = None
    client_order_id: Id | None = None
    type: OrderType | None = None
    status: OrderStatus = OrderStatus.OPEN
    time_in_force: str | None = None
    price: Amount | None = None
    average: Amount | None = None
    filled: Amount | None = None
    remaining: Amount | None = None
    cost: Amount | None = None
    stop_price: Amount | None = None
    trigger_price: Amount | None = None
    take_profit_price: Amount | None = None
    stop_loss_price: Amount | None = None
    reduce_only: bool | None = None
    post_only: bool | None = None
    timestamp: Timestamp | None = None
    last_trade_timestamp: Timestamp | None = None
    last_update_timestamp: Timestamp | None = None
    fee: Fee | None = None
    fees: tuple[Fee, ...] = ()
    trades: tuple[Trade, ...] = ()

    _iso_fallback: ClassVar[tuple[tuple[str, str], ...]] = (("timestamp", "datetime"),)

    @property
    def is_terminal(self) -> bool:
        """True once the order is closed, canceled, expired or rejected.

        Example::

            >>> o = Order(id="1", symbol="X", side="buy", amount=Decimal(1), status="closed")
            >>> o.is_terminal
            True
        """
        return self.status in _TERMINAL


class Balance(Model, frozen=True, gc=False):
    """One currency of an account (a ccxt balance entry ``{free, used, total, debt}``).

    ``free``/``used``/``total`` may be negative (margin and derivatives accounts
    report them); ``debt`` is >= 0. ``updated`` is set to now when absent.

    Example::

        >>> Balance(currency="USDT", free=Decimal("10"), total=Decimal("10")).free
        Decimal('10')
    """

    currency: Id
    free: Money | None = None
    used: Money | None = None
    total: Money | None = None
    debt: Amount | None = None
    updated: Timestamp | None = None

    _stamped: ClassVar[tuple[str, ...]] = ("updated",)


_BALANCE_KEYS: Final = frozenset({"info", "timestamp", "datetime", "free", "used", "total", "debt"})


def balances_from_ccxt(data: Mapping[str, Any]) -> dict[str, Balance]:
    """Return ``{currency: Balance}`` from a ccxt balance dict or a plain mapping.

    Accepts ccxt's ``fetch_balance()``/``watch_balance()`` result (per-currency
    entries, top-level ``free``/``used``/``total`` dicts, ``info``, ``timestamp``)
    or a mapping of currency to :class:`Balance` or dict. Errors name the
    currency: ``"BTC.free"``.

    Example::

        balances = balances_from_ccxt(await ex.fetch_balance())
        balances["USDT"].free
    """
    if not isinstance(data, Mapping):
        raise ValidationError("$", f"expected a mapping, got {type(data).__name__}")
    updated = data.get("timestamp")
    if updated is None:
        updated = data.get("datetime")
    entries: dict[str, dict[str, Any]] = {}
    for key in ("free", "used", "total", "debt"):
        column = data.get(key)
        if isinstance(column, Mapping):
            for code, value in column.items():
                entries.setdefault(code, {})[key] = value
    result: dict[str, Balance] = {}
    for code, entry in data.items():
        if code in _BALANCE_KEYS:
            continue
        if not isinstance(code, str) or not code:
            raise ValidationError("$", f"currency codes must be non-empty str, got {code!r}")
        result[code] = _balance(code, entry, updated)
    for code, column_entry in entries.items():
        if code not in result:
            result[code] = _balance(code, column_entry, updated)
    return result


def _balance(code: str, entry: Any, updated: Any) -> Balance:
    try:
        if isinstance(entry, Mapping):
            entry = {"currency": code, **entry}
            if entry.get("updated") is None:
                entry["updated"] = updated
        balance = convert(entry, Balance)
        if balance.currency != code:
            raise ValidationError("currency", f"{balance.currency!r} filed under {code!r}")
    except ValidationError as exc:
        field = code if exc.field == "$" else f"{code}.{exc.field}"
        raise ValidationError(field, exc.reason) from None
    return balance


class Position(Model, frozen=True):
    """A derivatives position (ccxt ``Position``); ``contracts`` >= 0, ``side`` gives direction.

    PnL, notional, collateral and percentage may be negative; prices, sizes,
    leverage and margins may not.

    Example::

        positions = [Position.from_ccxt(p, exchange="bybit") for p in await ex.fetch_positions()]
    """

    symbol: Id
    id: Id | None = None
    exchange: Id | None = None
    side: PositionSide | None = None
    contracts: Amount | None = None
    contract_size: Amount | None = None
    entry_price: Amount | None = None
    mark_price: Amount | None = None
    last_price: Amount | None = None
    liquidation_price: Amount | None = None
    stop_loss_price: Amount | None = None
    take_profit_price: Amount | None = None
    notional: Money | None = None
    leverage: Amount | None = None
    collateral: Money | None = None
    initial_margin: Amount | None = None
    initial_margin_percentage: Amount | None = None
    maintenance_margin: Amount | None = None
    maintenance_margin_percentage: Amount | None = None
    margin_ratio: Amount | None = None
    unrealized_pnl: Money | None = None
    realized_pnl: Money | None = None
    percentage: Money | None = None
    margin_mode: str | None = None
    hedged: bool | None = None
    timestamp: Timestamp | None = None
    last_update_timestamp: Timestamp | None = None

    _iso_fallback: ClassVar[tuple[tuple[str, str], ...]] = (("timestamp", "datetime"),)


# --------------------------------------------------------------------------- metadata & ops


class Exchange(Model, frozen=True):
    """Metadata record of an exchange: ccxt ``id``, display ``name``, ``enabled``, ``has``.

    ``Exchange.from_ccxt(ccxt_exchange.describe())`` works (``id``, ``name``,
    ``has``); ``params`` holds anything the deployment wants to keep with it.

    Example::

        >>> Exchange(id="binance", name="Binance").enabled
        True
    """

    id: Id
    name: str | None = None
    enabled: bool = True
    has: dict[str, Any] = msgspec.field(default_factory=dict)
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class BotStatus(Model, frozen=True):
    """What a bot last reported about itself; ``data`` is free-form.

    Example::

        >>> BotStatus(bot_id="bot-1", status="trading", symbol="BTC/USDT").status
        'trading'
    """

    bot_id: Id
    status: str | None = None
    exchange: Id | None = None
    symbol: Id | None = None
    message: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    updated: Timestamp | None = None

    _stamped: ClassVar[tuple[str, ...]] = ("updated",)


class ProcessInfo(Model, frozen=True):
    """A registered process and its last heartbeat; ``started``/``updated`` default to now.

    Example::

        >>> p = ProcessInfo.from_ccxt({"id": "p1", "kind": "bot", "component": "grid"})
        >>> p.status, p.started is not None
        (<ProcessStatus.STARTING: 'starting'>, True)
    """

    id: Id
    kind: Id
    component: Id
    status: ProcessStatus = ProcessStatus.STARTING
    message: str | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    started: Timestamp | None = None
    updated: Timestamp | None = None
    host: str | None = None
    pid: Count | None = None

    _stamped: ClassVar[tuple[str, ...]] = ("started", "updated")


def _models() -> Iterable[type[Model]]:
    """Every concrete model (used by tests and the codec's warm-up)."""
    return (
        Ticker,
        Candle,
        MinMax,
        MarketPrecision,
        MarketLimits,
        Market,
        Fee,
        Trade,
        Order,
        Balance,
        Position,
        Exchange,
        BotStatus,
        ProcessInfo,
    )
