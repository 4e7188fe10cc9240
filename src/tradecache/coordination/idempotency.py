"""Idempotent execution: a call with the same key runs once, duplicates replay its result.

``cache.idempotency(scope, ...)`` returns an :class:`Idempotency`; its
:meth:`~Idempotency.run` claims the key atomically *before* the call, so two
processes submitting the same order never both reach the exchange::

    idem = cache.idempotency("orders", ttl=86_400, in_flight_ttl=30)

    # The key is the canonical hash of the order content (dict order, 1.0 vs 1 do not matter):
    result = await idem.run(order, lambda: exchange.create_order(**order))

    # Or an explicit key, with the payload checked against the key's first use:
    result = await idem.run(order["clientOrderId"], submit, payload=order)

    # Or a key made of some fields only; the rest must match too, else KeyReuse:
    result = await idem.run(order, submit, fields=("clientOrderId",))

What a call with a key gets, by the state of the key's record:

* no record: this call claims it (one Lua script) and runs ``fn``;
* completed: the stored result, decoded with ``result_type`` (the bytes are
  exactly what the first run stored: no second call, no re-encoding);
* failed with an error classified final (``final=``): :class:`ReplayedFailure`;
* in flight elsewhere: :class:`~tradecache.errors.InProgress`, or with
  ``wait=s`` the result once it is stored (bounded polling: 2 ms doubling to
  50 ms, never past ``wait``), then ``InProgress`` if it is still running;
* in flight, but its owner's lease (``in_flight_ttl``, renewed every third of
  it while ``fn`` runs) expired on the **server's** clock: the owner is taken
  to be dead; the claim script re-checks the lease and hands the record to
  exactly one caller, which runs ``fn`` again (logged as a warning: the dead
  attempt may have had side effects; give the exchange a client order id);
* same key, another payload: :class:`~tradecache.errors.KeyReuse`.

If ``fn`` raises, the claim is released (a retry may run it) unless the
exception is *final* (``final=(InsufficientFunds, ...)`` types or predicates):
then the failure is stored and replayed. ``CancelledError`` releases too.

**Results** are stored with the cache's codec (JSON by default): ``None``,
``bool``, ``int``, ``float``, ``str``, ``Decimal``, lists, dicts with string
keys, and the :mod:`tradecache.models` Structs. Pass ``result_type`` (a model,
``Decimal``, ``list[Order]`` ...) to get typed values back from a replay;
without it a replay returns plain data. A result the codec cannot encode
is stored as a final failure (``ValidationError``), never silently dropped.

**Redis unreachable** (``ConnectionLost`` from the claim, within the
settings' timeouts): ``on_redis_down="fail_closed"`` (default) raises it;
``"fail_open"`` logs a warning and runs ``fn`` without protection. If Redis
fails *after* ``fn`` succeeded, the result is returned and storing it is
retried in the background for ``in_flight_ttl`` seconds.

**Cost**: a first run is 2 round trips (claim, complete), a replay 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final, Literal, TypeAlias, TypeVar, cast

import msgspec

from ..context import Context
from ..errors import (
    ConnectionLost,
    InProgress,
    KeyReuse,
    LockLost,
    ReplayedFailure,
    TradecacheError,
    ValidationError,
    translate_redis_errors,
)
from ..keys import validate_part
from ..scripts import Script

__all__ = ["Idempotency", "IdempotencyRecord", "OnRedisDown", "canonical_hash"]

log = logging.getLogger(__name__)

T = TypeVar("T")

OnRedisDown: TypeAlias = Literal["fail_closed", "fail_open"]
Final_: TypeAlias = "type[BaseException] | Callable[[BaseException], bool]"

_CLAIM: Final = Script("idempotency_claim", include=("idempotency",))
_RENEW: Final = Script("idempotency_renew", include=("idempotency",))
_COMPLETE: Final = Script("idempotency_complete")
_RELEASE: Final = Script("idempotency_release")

_POLL_FIRST: Final = 0.002
_POLL_MAX: Final = 0.05
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# --- canonical hashing ------------------------------------------------------------------------


def _number(value: int | float | Decimal) -> str:
    """An exact, unique text for a number: 1 == 1.0 == Decimal('1.00') == 1e0."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError("payload", f"cannot hash the number {value!r}")
        value = Decimal(repr(value))  # the shortest text that round-trips: 0.1 -> '0.1'
    elif isinstance(value, int):
        value = Decimal(value)
    elif not value.is_finite():
        raise ValidationError("payload", f"cannot hash the number {value!r}")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    while len(digits) > 1 and digits[-1] == 0:
        digits = digits[:-1]
        exponent += 1
    if digits == (0,):
        return "0"
    return ("-" if sign else "") + "".join(map(str, digits)) + "e" + str(exponent)


def _struct_items(obj: msgspec.Struct) -> dict[str, Any]:
    return {info.encode_name: getattr(obj, info.name) for info in msgspec.structs.fields(type(obj))}


def _canon(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):  # also StrEnum members: the same as their value
        return "s:" + value
    if isinstance(value, int | float | Decimal):  # also IntEnum members
        return "n:" + _number(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError(path or "payload", "a datetime must be timezone-aware")
        delta = value - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return "n:" + _number(Decimal(micros).scaleb(-3))  # epoch ms, as on the wire
    if isinstance(value, Enum):
        return _canon(value.value, path)
    if isinstance(value, bytes | bytearray):
        return "b:" + bytes(value).hex()
    if isinstance(value, msgspec.Struct):
        value = _struct_items(value)
    elif is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(path or "payload", f"key {key!r} is not a str")
            if item is not None:  # a None field is the same as an absent one
                result[key] = _canon(item, f"{path}.{key}" if path else key)
        return result
    if isinstance(value, list | tuple):
        return [_canon(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValidationError(path or "payload", f"cannot hash a {type(value).__name__}")


def _select(payload: Any, names: Sequence[str]) -> dict[str, Any]:
    if isinstance(names, str):
        raise ValidationError("fields", "must be a sequence of field names, not a str")
    if isinstance(payload, msgspec.Struct):
        aliases = {info.name: info.encode_name for info in msgspec.structs.fields(type(payload))}
        items = _struct_items(payload)
        names = [aliases.get(name, name) for name in names]
    elif isinstance(payload, Mapping):
        items = dict(payload)
    else:
        raise ValidationError("fields", "field selection needs a dict or a Struct payload")
    if not names:
        raise ValidationError("fields", "select at least one field")
    return {name: items.get(name) for name in names}


def canonical_hash(payload: Any, fields: Sequence[str] | None = None) -> str:
    """SHA-256 (hex) of the canonical form of ``payload`` (or of its ``fields`` only).

    The canonical form sorts mapping keys, writes every number (``int``,
    ``float``, ``Decimal``) as its exact normalised value (``1``, ``1.0`` and
    ``Decimal("1.00")`` are the same; ``0.1`` is ``Decimal("0.1")``, not the
    binary float), turns aware datetimes into epoch milliseconds, Structs into
    their wire (camelCase) names, enums into their values, and drops keys
    whose value is ``None``. Strings and numbers never collide (``"1"`` is
    not ``1``). Unsupported values raise ``ValidationError``.

    Example::

        >>> canonical_hash({"amount": Decimal("1.0"), "side": "buy"}) == \\
        ...     canonical_hash({"side": "buy", "amount": 1})
        True
    """
    if fields is not None:
        payload = _select(payload, fields)
    canonical = _canon(payload, "")
    return hashlib.sha256(msgspec.json.encode(canonical, order="sorted")).hexdigest()


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What Redis holds for a key (see :meth:`Idempotency.lookup`).

    ``status`` is ``"in_flight"``, ``"completed"`` or ``"failed"``;
    ``attempt`` counts claims (above 1 after a dead owner's claim was taken
    over); ``result`` is the stored bytes of a completed call; ``error_type``
    and ``message`` describe a final failure.
    """

    key: str
    status: str
    attempt: int
    result: bytes | None = None
    error_type: str | None = None
    message: str | None = None


_STATUS: Final = {"run": "in_flight", "ok": "completed", "err": "failed"}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_BACKGROUND: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones


def _spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


class _Renewal:
    """Extends the owner's lease every third of it while ``fn`` runs."""

    __slots__ = ("_handle", "_idem", "_key", "_stopped", "_token")

    def __init__(self, idem: Idempotency, key: str, token: str) -> None:
        self._idem, self._key, self._token = idem, key, token
        self._stopped = False
        self._handle = asyncio.get_running_loop().call_later(idem.in_flight_ttl / 3, self._due)

    def _due(self) -> None:
        _spawn(self._renew())

    async def _renew(self) -> None:
        try:
            owned = await self._idem._script(
                _RENEW, "idempotency.renew", self._key, self._token, self._idem._lease_ms
            )
        except ConnectionLost:
            owned = 1  # try again next time; the lease may still be ours
        if self._stopped:
            return  # fn ended while this renewal was on the wire: its outcome decides now
        if owned:
            self._handle = asyncio.get_running_loop().call_later(
                self._idem.in_flight_ttl / 3, self._due
            )
        else:
            log.error(
                "idempotency claim %s was taken over while its call ran",
                self._key,
                extra={"record": self._key},
            )

    def cancel(self) -> None:
        """Stop renewing. A renewal on the wire is left to finish (one bounded round
        trip): cancelling it is not reliable on Python 3.11 (see ``_tasks``)."""
        self._stopped = True
        self._handle.cancel()


class Idempotency:
    """Run-once execution for one ``scope`` (``"orders"``, ``"withdrawals"`` ...).

    Build it with ``cache.idempotency(scope, ttl=86400, in_flight_ttl=30,
    on_redis_down="fail_closed", final=())``. ``ttl`` is how long a completed
    result (or final failure) is kept, counted from completion;
    ``in_flight_ttl`` is the owner's lease while its call runs (renewed
    every third of it). See the module documentation for the semantics.

    Example::

        idem = cache.idempotency("orders", final=(InvalidOrder,))
        placed = await idem.run(order, lambda: exchange.create_order(**order), wait=5)
    """

    def __init__(
        self,
        ctx: Context,
        scope: str,
        *,
        ttl: float = 86_400.0,
        in_flight_ttl: float = 30.0,
        on_redis_down: OnRedisDown = "fail_closed",
        final: Sequence[Final_] = (),
    ) -> None:
        self.scope = validate_part(scope, "scope", max_length=100)
        for name, value in (("ttl", ttl), ("in_flight_ttl", in_flight_ttl)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValidationError(name, "must be a number of seconds")
            if not math.isfinite(value) or value < 0.01:
                raise ValidationError(name, "must be a finite number >= 0.01")
        if ttl < in_flight_ttl:
            raise ValidationError("ttl", "must be at least in_flight_ttl")
        if on_redis_down not in ("fail_closed", "fail_open"):
            raise ValidationError("on_redis_down", "must be 'fail_closed' or 'fail_open'")
        final = tuple(final)
        for rule in final:
            if not ((isinstance(rule, type) and issubclass(rule, BaseException)) or callable(rule)):
                raise ValidationError(
                    "final", f"{rule!r} is neither an exception type nor a predicate"
                )
        self.ttl = float(ttl)
        self.in_flight_ttl = float(in_flight_ttl)
        self.on_redis_down: OnRedisDown = on_redis_down
        self.final: tuple[Final_, ...] = final
        self._ctx = ctx
        self._client = ctx.client
        self._codec = ctx.codec
        self.metrics = ctx.metrics
        self._ttl_ms = str(max(1, round(self.ttl * 1000)))
        self._lease_ms = str(max(1, round(self.in_flight_ttl * 1000)))

    def __repr__(self) -> str:
        return f"<Idempotency scope={self.scope!r} on_redis_down={self.on_redis_down!r}>"

    # --- keys ------------------------------------------------------------------------------------

    def key_for(
        self, key_or_payload: Any, *, fields: Sequence[str] | None = None, payload: Any = None
    ) -> tuple[str, str]:
        """The ``(key, payload fingerprint)`` :meth:`run` uses; no round trip.

        A ``str`` is the key itself (validated like every key part) and its
        fingerprint is the hash of ``payload`` (``""`` without one). A payload
        (dict, Struct, dataclass) gives the key ``sha256-<hash of fields or of
        everything>`` and the fingerprint of the whole payload.

        Example: ``key, _ = idem.key_for(order, fields=("clientOrderId",))``
        """
        if isinstance(key_or_payload, str):
            if fields is not None:
                raise ValidationError("fields", "field selection needs a payload, not a key")
            key = validate_part(key_or_payload, "key")
            return key, "" if payload is None else canonical_hash(payload)
        if payload is not None:
            raise ValidationError("payload", "pass the payload once: as the key or as payload=")
        fingerprint = canonical_hash(key_or_payload)
        digest = fingerprint if fields is None else canonical_hash(key_or_payload, fields)
        return "sha256-" + digest, fingerprint

    # --- run -----------------------------------------------------------------------------------

    async def run(
        self,
        key_or_payload: Any,
        fn: Callable[[], Awaitable[T]],
        *,
        wait: float | None = None,
        fields: Sequence[str] | None = None,
        payload: Any = None,
        result_type: Any = Any,
    ) -> T:
        """Run ``await fn()`` once for this key; replay its stored result to duplicates.

        ``key_or_payload``: a key (``str``) or a payload to hash (see
        :meth:`key_for`; ``fields`` selects the fields making the key).
        ``wait``: seconds to wait for a duplicate in flight elsewhere (default:
        raise ``InProgress`` at once). ``result_type``: the type replays are
        decoded into.

        Raises ``InProgress``, ``KeyReuse``, ``ReplayedFailure``, whatever
        ``fn`` raises, ``ConnectionLost`` (``fail_closed``), ``LockLost`` when
        the claim was taken over while ``fn`` ran (its lease expired: the call
        may have run twice), ``ValidationError`` for bad input.

        Example::

            order_id = await idem.run(order, lambda: submit(order), wait=2.0, result_type=str)
        """
        if wait is not None and (not isinstance(wait, int | float) or not wait >= 0):
            raise ValidationError("wait", "must be None or a number of seconds >= 0")
        key, fingerprint = self.key_for(key_or_payload, fields=fields, payload=payload)
        record = self._ctx.keys.idempotency(self.scope, key)
        token = secrets.token_hex(16)
        deadline = None if wait is None else time.monotonic() + wait
        delay = _POLL_FIRST
        while True:
            try:
                reply = await self._script(
                    _CLAIM,
                    "idempotency.claim",
                    record,
                    token,
                    fingerprint,
                    self._lease_ms,
                    self._ttl_ms,
                )
            except ConnectionLost:
                if self.on_redis_down == "fail_closed":
                    raise
                log.warning(
                    "idempotency %s/%s: Redis unreachable, running unprotected",
                    self.scope,
                    key,
                    extra={"scope": self.scope, "key": key},
                )
                return await fn()
            status = _text(reply[0])
            if status in {"claimed", "reclaimed"}:
                if status == "reclaimed":
                    log.warning(
                        "idempotency %s/%s: took over a claim whose owner's lease expired "
                        "(attempt %s); the earlier attempt may have had side effects",
                        self.scope,
                        key,
                        reply[1],
                        extra={"scope": self.scope, "key": key, "attempt": reply[1]},
                    )
                return await self._execute(record, token, key, fn)
            if status == "done":
                return cast(T, self._codec.decode(reply[1], result_type))
            if status == "failed":
                raise ReplayedFailure(_text(reply[1]), _text(reply[2]))
            if status == "reuse":
                raise KeyReuse(
                    f"idempotency key {key!r} in {self.scope!r} was used with another payload"
                )
            lease_left = int(reply[1]) / 1000
            now = time.monotonic()
            if deadline is None or now >= deadline:
                raise InProgress(
                    f"idempotency key {key!r} in {self.scope!r} is in flight "
                    f"(its lease ends within {lease_left:.3f}s)"
                )
            # Bounded polling; never sleep past the deadline or the lease end.
            await asyncio.sleep(min(delay, deadline - now, lease_left + 0.001))
            delay = min(delay * 2, _POLL_MAX)

    async def _execute(
        self, record: str, token: str, key: str, fn: Callable[[], Awaitable[T]]
    ) -> T:
        renewal = _Renewal(self, record, token)
        try:
            result = await fn()
        except BaseException as exc:
            renewal.cancel()
            if isinstance(exc, Exception) and self._is_final(exc):
                await self._store(record, token, key, "err", type(exc).__name__, str(exc))
            elif isinstance(exc, Exception):
                await self._release(record, token)
            else:  # cancelled: hand the claim back without delaying the cancellation
                _spawn(self._release(record, token))
            raise
        renewal.cancel()
        try:
            data = self._codec.encode(result)
        except ValidationError as exc:
            await self._store(record, token, key, "err", "ValidationError", exc.reason)
            raise ValidationError("result", f"cannot be stored: {exc.reason}") from exc
        await self._store(record, token, key, "ok", data, "")
        return result

    def _is_final(self, exc: Exception) -> bool:
        for rule in self.final:
            if isinstance(rule, type):
                if isinstance(exc, rule):
                    return True
            elif rule(exc):
                return True
        return False

    async def _store(
        self, record: str, token: str, key: str, status: str, data: bytes | str, message: str
    ) -> None:
        args = (record, token, status, data, message, self._ttl_ms)
        try:
            stored = await self._script(_COMPLETE, "idempotency.complete", *args)
        except ConnectionLost as exc:
            log.warning(
                "idempotency %s/%s: could not store the outcome (%s); retrying",
                self.scope,
                key,
                exc,
                extra={"scope": self.scope, "key": key},
            )
            _spawn(self._store_later(args))
            return
        if not stored:
            raise LockLost(
                f"idempotency claim {key!r} in {self.scope!r} was taken over after its lease "
                "expired; the call may have run twice"
            )

    async def _store_later(self, args: tuple[str, str, str, bytes | str, str, str]) -> None:
        deadline = time.monotonic() + self.in_flight_ttl
        delay = 0.05
        while True:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            try:
                stored = await self._script(_COMPLETE, "idempotency.complete", *args)
            except ConnectionLost:
                if time.monotonic() >= deadline:
                    log.error(
                        "idempotency %s: gave up storing an outcome of %s",
                        self.scope,
                        args[0],
                        extra={"scope": self.scope, "record": args[0]},
                    )
                    return
                delay = min(delay * 2, 1.0)
                continue
            if not stored:
                log.error(
                    "idempotency %s: claim %s was taken over before its outcome was stored",
                    self.scope,
                    args[0],
                    extra={"scope": self.scope, "record": args[0]},
                )
            return

    async def _release(self, record: str, token: str) -> None:
        try:
            await self._script(_RELEASE, "idempotency.release", record, token)
        except ConnectionLost as exc:  # the lease runs out on its own
            log.warning(
                "idempotency %s: could not release %s (%s)",
                self.scope,
                record,
                exc,
                extra={"scope": self.scope, "record": record},
            )

    async def _script(self, script: Script, operation: str, record: str, *args: str | bytes) -> Any:
        started = time.perf_counter()
        try:
            reply = await script(self._client, [record], args)
        except TradecacheError:
            self.metrics.observe(operation, time.perf_counter() - started, error=True)
            raise
        self.metrics.observe(operation, time.perf_counter() - started)
        return reply

    # --- inspection ------------------------------------------------------------------------------

    async def lookup(
        self, key_or_payload: Any, *, fields: Sequence[str] | None = None
    ) -> IdempotencyRecord | None:
        """The record of a key, or ``None`` when there is none (never run, or expired).

        Example::

            record = await idem.lookup(order)
            if record and record.status == "completed":
                print(codec.decode(record.result))
        """
        key, _ = self.key_for(key_or_payload, fields=fields)
        record = self._ctx.keys.idempotency(self.scope, key)
        with translate_redis_errors():
            raw = await self._client.hgetall(record)
        if not raw:
            return None
        values: dict[str, bytes] = {_text(k): cast(bytes, v) for k, v in raw.items()}
        text = {k: _text(v) for k, v in values.items() if k != "r"}
        return IdempotencyRecord(
            key=key,
            status=_STATUS.get(text.get("s", ""), text.get("s", "")),
            attempt=int(text.get("a", "0")),
            result=values.get("r"),
            error_type=text.get("et"),
            message=text.get("em"),
        )

    async def forget(self, key_or_payload: Any, *, fields: Sequence[str] | None = None) -> bool:
        """Delete a key's record (an operator action after reconciliation); True if it existed.

        Deleting an in-flight record lets a duplicate run: only do it once the
        call is known to be over. Example: ``await idem.forget(order)``
        """
        key, _ = self.key_for(key_or_payload, fields=fields)
        with translate_redis_errors():
            deleted = await self._client.delete(self._ctx.keys.idempotency(self.scope, key))
        return bool(deleted)
