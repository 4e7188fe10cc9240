"""Process heartbeats and system health (``cache.processes``).

Every long-running component (a ticker feed per symbol, a bot, an order
executor ...) registers once and then heartbeats; operators and health checks
read who is alive from a time-ordered index, never from a SCAN::

    info = await cache.processes.register("tick", "binance:BTC/USDT", {"interval": 1})
    while running:
        await cache.processes.heartbeat(info.id, status="running", params={"last": price})
    await cache.processes.stop(info.id)

    alive = await cache.processes.active(kind="tick", within=timedelta(seconds=30))
    report = await cache.processes.health()

Layout (``keys.py``, all under the hash tag ``{processes}``, so one slot):

* ``proc:{processes}:r:<id>``: hash record (id, kind, component, status,
  message, started, updated, host, pid); times are the *server's* clock in
  epoch ms, so a skewed client clock never makes a process look stale;
* ``proc:{processes}:p:<id>``: hash of params, one field per param, each a
  JSON value. A heartbeat merges params field by field inside one Lua script,
  so concurrent heartbeats with different params lose nothing (the reference
  library rewrote a JSON blob from Python and kept 1 of 30 concurrent updates);
* ``proc:{processes}:live`` and one ZSET per kind and per component, scored by
  the last heartbeat: ``active()`` is a range query on one of them.

A process id is ``<kind>:<component>:<random hex>``: readable in logs, and it
carries what a heartbeat needs to find the indexes in the same round trip.

Register, heartbeat and stop are one Lua script each (one round trip, atomic).
A stopped process leaves the indexes; its record stays readable with
``get()`` for ``settings.process_retention`` seconds. Heartbeats after
``stop()``/``cleanup_stale()`` keep the process stopped unless they pass a
``status``: a process that was wrongly declared dead revives with
``heartbeat(id, status="running")``.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import msgspec

from ..codec import CodecError, get_codec
from ..context import Context
from ..coordination.events import EventBus, Subscription
from ..errors import NotFound, ValidationError, redis_errors
from ..keys import Keys, validate_part
from ..metrics import instrumented
from ..models import ProcessInfo, ProcessStatus, from_ms
from ..scripts import Script

__all__ = ["ProcessCache", "SystemHealth"]

_REGISTER: Final = Script("process_register", include=("clock",))
_HEARTBEAT: Final = Script("process_heartbeat", include=("clock",))
_LIST: Final = Script("process_list", include=("clock",))
_CLEANUP: Final = Script("process_cleanup", include=("clock",))

_TOPIC_PREFIX: Final = "processes:"
_MAX_KIND: Final = 64
_MAX_COMPONENT: Final = 120
_MAX_MESSAGE: Final = 10_000
_JSON: Final = get_codec("json")
_STATUS_VALUES: Final = ", ".join(s.value for s in ProcessStatus)


class SystemHealth(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`ProcessCache.health` found: totals, stale and errored processes.

    ``healthy`` is True when no registered process is stale or in ``error``.
    ``by_kind_status`` is ``{kind: {status: count}}``; ``checked`` is the
    server's time of the check.

    Example::

        report = await cache.processes.health()
        if not report.healthy:
            for p in report.stale: log.warning("%s silent since %s", p.id, p.updated)
    """

    healthy: bool
    total: int
    by_kind: dict[str, int]
    by_status: dict[str, int]
    by_kind_status: dict[str, dict[str, int]]
    stale: tuple[ProcessInfo, ...]
    errored: tuple[ProcessInfo, ...]
    stale_after: float
    checked: datetime


def _kind(value: object) -> str:
    kind = validate_part(value, "kind", max_length=_MAX_KIND)
    if ":" in kind:
        raise ValidationError("kind", "must not contain ':'")
    return str(kind)


def _component(value: object) -> str:
    return str(validate_part(value, "component", max_length=_MAX_COMPONENT))


def _status(value: object) -> ProcessStatus:
    if isinstance(value, str):
        try:
            return ProcessStatus(value)
        except ValueError:
            pass
    raise ValidationError("status", f"{value!r} is not one of: {_STATUS_VALUES}")


def _message(value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError("message", f"must be a str, not {type(value).__name__}")
    if len(value) > _MAX_MESSAGE:
        raise ValidationError("message", f"longer than {_MAX_MESSAGE} characters")
    return value


def _seconds(value: object, field: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValidationError(field, f"expected a timedelta or seconds, not {type(value).__name__}")
    if not seconds > 0 or seconds == float("inf"):
        raise ValidationError(field, f"must be a positive, finite duration, got {value!r}")
    return float(seconds)


def _json(value: object, field: str) -> bytes:
    try:
        return _JSON.encode(value)
    except (CodecError, NotImplementedError) as exc:  # the latter leaks from msgspec hooks
        reason = exc.reason if isinstance(exc, CodecError) else str(exc)
        raise ValidationError(field, reason) from None


def _params(value: object) -> tuple[list[bytes | str], list[str]]:
    """Encode params: ([name, json, ...] to set, [names whose value is None: to remove])."""
    if not isinstance(value, Mapping):
        raise ValidationError("params", f"must be a mapping, not {type(value).__name__}")
    pairs: list[bytes | str] = []
    removed: list[str] = []
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise ValidationError("params", f"names must be non-empty str, got {name!r}")
        if item is None:
            removed.append(name)
            continue
        pairs += [name, _json(item, f"params.{name}")]
    return pairs, removed


def parse_process_id(process_id: object) -> tuple[str, str]:
    """Return ``(kind, component)`` of a process id; ValidationError if it is not one.

    Example::

        >>> parse_process_id("tick:binance:BTC/USDT:9f86d081")
        ('tick', 'binance:BTC/USDT')
    """
    text = validate_part(process_id, "process_id", max_length=_MAX_KIND + _MAX_COMPONENT + 40)
    kind, _, rest = text.partition(":")
    component, _, token = rest.rpartition(":")
    if not (kind and component and token):
        raise ValidationError("process_id", f"{text!r} is not '<kind>:<component>:<token>'")
    return kind, component


@lru_cache(maxsize=4096)
def _process_keys(keys: Keys, process_id: str) -> tuple[str, ...]:
    kind, component = parse_process_id(process_id)
    return (
        keys.process(process_id),
        keys.process_params(process_id),
        keys.process_index(),
        keys.process_kind_index(kind),
        keys.process_component_index(component),
    )


def _pairs(flat: list[bytes]) -> dict[str, bytes]:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _info(record: Mapping[str, bytes], params: Mapping[str, bytes]) -> ProcessInfo:
    started, updated, pid = record.get("started"), record.get("updated"), record.get("pid")
    try:
        decoded = {name: _JSON.decode(value) for name, value in params.items()}
    except CodecError as exc:
        raise CodecError("params", exc.reason) from None
    return ProcessInfo(
        id=_text(record.get("id")),  # type: ignore[arg-type]  # None is reported by the model
        kind=_text(record.get("kind")),  # type: ignore[arg-type]
        component=_text(record.get("component")),  # type: ignore[arg-type]
        status=_text(record.get("status")) or ProcessStatus.STARTING,  # type: ignore[arg-type]
        message=_text(record.get("message")),
        params=decoded,
        started=None if started is None else from_ms(int(started)),
        updated=None if updated is None else from_ms(int(updated)),
        host=_text(record.get("host")),
        pid=None if pid is None else int(pid),
    )


class ProcessCache:
    """Process registry with atomic heartbeats and a time-ordered liveness index.

    Built by the facade as ``cache.processes``; by hand: ``ProcessCache(ctx)``.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.client = ctx.client
        self.keys = ctx.keys
        self.metrics = ctx.metrics
        self.settings = ctx.settings
        self._host = socket.gethostname()
        self._events = EventBus(ctx)

    def __repr__(self) -> str:
        return f"ProcessCache(namespace={self.keys.namespace!r})"

    def _process_keys(self, process_id: object) -> list[str]:
        """The 5 keys of a process's scripts (cached: heartbeats repeat the same ids)."""
        if not isinstance(process_id, str):
            parse_process_id(process_id)  # raises the ValidationError
        return list(_process_keys(self.keys, process_id))

    # --- writes --------------------------------------------------------------------------------

    @instrumented("processes.register")
    @redis_errors
    async def register(
        self,
        kind: str,
        component: str,
        params: Mapping[str, Any] | None = None,
        *,
        status: ProcessStatus | str = ProcessStatus.STARTING,
        message: str | None = None,
    ) -> ProcessInfo:
        """Register a process and return its :class:`~tradecache.models.ProcessInfo`.

        ``kind`` groups processes (``"tick"``, ``"bot"``, ``"order"`` ...; no
        ``:``), ``component`` names this one (``"binance:BTC/USDT"``). The
        record, params and indexes are written atomically; the returned id is
        what :meth:`heartbeat` and :meth:`stop` take. ``host`` and ``pid`` of
        the calling process are recorded.

        Example::

            info = await cache.processes.register("tick", "binance:BTC/USDT",
                                                  {"symbols": 1}, message="connecting")
            info.id   # 'tick:binance:BTC/USDT:3f2a9c1d0b7e4a21'
        """
        kind = _kind(kind)
        component = _component(component)
        state = _status(status)
        if state is ProcessStatus.STOPPED:
            raise ValidationError("status", "a process cannot be registered as stopped")
        text = None if message is None else _message(message)
        pairs, _ = _params({} if params is None else params)
        process_id = f"{kind}:{component}:{secrets.token_hex(8)}"
        pid = os.getpid()
        now = await _REGISTER(
            self.client,
            self._process_keys(process_id),
            [
                process_id,
                kind,
                component,
                state.value,
                "0" if text is None else "1",
                text or "",
                self._host,
                pid,
                *pairs,
            ],
        )
        started = from_ms(int(now))
        return ProcessInfo(
            id=process_id,
            kind=kind,
            component=component,
            status=state,
            message=text,
            params={str(pairs[i]): _JSON.decode(pairs[i + 1]) for i in range(0, len(pairs), 2)},
            started=started,
            updated=started,
            host=self._host,
            pid=pid,
        )

    @instrumented("processes.heartbeat")
    @redis_errors
    async def heartbeat(
        self,
        process_id: str,
        status: ProcessStatus | str | None = None,
        message: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> datetime:
        """Record a heartbeat: one Lua script, one round trip, atomic.

        ``status`` and ``message`` replace the stored ones when given.
        ``params`` are merged field by field (a param set to ``None`` is
        removed, as in JSON merge-patch), so concurrent heartbeats that set
        different params keep all of them. Returns the server time of the
        heartbeat. Raises :class:`~tradecache.errors.NotFound` for an unknown
        (or expired, stopped long ago) process: register again.

        Example::

            await cache.processes.heartbeat(info.id, status="running",
                                            params={"ticks": 1200, "lag_ms": 3})
        """
        keys = self._process_keys(process_id)
        state = "" if status is None else _status(status).value
        text = None if message is None else _message(message)
        pairs, removed = _params({} if params is None else params)
        now = await _HEARTBEAT(
            self.client,
            keys,
            [
                process_id,
                state,
                "0" if text is None else "1",
                text or "",
                int(self.settings.process_retention * 1000),
                len(pairs) // 2,
                *pairs,
                *removed,
            ],
        )
        if now is None:
            raise NotFound(f"process {process_id!r} is not registered")
        return from_ms(int(now))

    async def stop(self, process_id: str, message: str | None = None) -> datetime:
        """Mark a process stopped and drop it from the liveness indexes.

        Its record stays readable with :meth:`get` for
        ``settings.process_retention`` seconds. Raises ``NotFound`` for an
        unknown process.

        Example::

            await cache.processes.stop(info.id, message="shutdown")
        """
        return await self.heartbeat(process_id, status=ProcessStatus.STOPPED, message=message)

    @instrumented("processes.cleanup_stale")
    @redis_errors
    async def cleanup_stale(self, older_than: timedelta | float | None = None) -> int:
        """Stop every process whose last heartbeat is older than ``older_than``.

        ``older_than`` defaults to ``settings.process_stale_after``; the
        processes are stopped atomically (status ``stopped``, a message saying
        why, out of the indexes). Returns how many were stopped.

        Example::

            n = await cache.processes.cleanup_stale(timedelta(minutes=5))
        """
        seconds = (
            self.settings.process_stale_after
            if older_than is None
            else _seconds(older_than, "older_than")
        )
        record, params, kinds, components = self.keys.process_prefixes()
        count = await _CLEANUP(
            self.client,
            [self.keys.process_index()],
            [
                int(seconds * 1000),
                record,
                params,
                kinds,
                components,
                int(self.settings.process_retention * 1000),
                f"stopped by cleanup_stale: no heartbeat for {seconds:g}s",
            ],
        )
        return int(count)

    # --- reads ---------------------------------------------------------------------------------

    @instrumented("processes.get")
    @redis_errors
    async def get(self, process_id: str) -> ProcessInfo | None:
        """The record of a process (stopped ones too, until they expire), or None.

        Example::

            info = await cache.processes.get("tick:binance:BTC/USDT:3f2a9c1d0b7e4a21")
        """
        keys = self._process_keys(process_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys[0])
        pipe.hgetall(keys[1])
        record, params = await pipe.execute()
        if not record:
            return None
        return _info(
            {k.decode(): v for k, v in record.items()},
            {k.decode(): v for k, v in params.items()},
        )

    async def _list(
        self, kind: str | None, component: str | None, window_ms: int
    ) -> tuple[datetime, list[ProcessInfo]]:
        kind_filter = component_filter = ""
        if kind is not None and component is not None:
            index = self.keys.process_component_index(_component(component))
            kind_filter = _kind(kind)
        elif kind is not None:
            index = self.keys.process_kind_index(_kind(kind))
        elif component is not None:
            index = self.keys.process_component_index(_component(component))
        else:
            index = self.keys.process_index()
        record, params, _, _ = self.keys.process_prefixes()
        reply = await _LIST(
            self.client,
            [index],
            [window_ms, record, params, kind_filter, component_filter],
        )
        now = from_ms(int(reply[0]))
        items = [_info(_pairs(reply[i]), _pairs(reply[i + 1])) for i in range(1, len(reply), 2)]
        return now, items

    @instrumented("processes.active")
    @redis_errors
    async def active(
        self,
        kind: str | None = None,
        component: str | None = None,
        within: timedelta | float | None = None,
    ) -> list[ProcessInfo]:
        """Processes that heartbeat within ``within``, newest first.

        ``within`` (a timedelta or seconds) defaults to
        ``settings.process_stale_after``. One round trip: a range query on
        the kind's, the component's or the global heartbeat index.

        Example::

            bots = await cache.processes.active(kind="bot", within=timedelta(seconds=30))
        """
        seconds = self.settings.process_stale_after if within is None else within
        window = int(_seconds(seconds, "within") * 1000)
        _, items = await self._list(kind, component, window)
        return items

    @instrumented("processes.list")
    @redis_errors
    async def list(
        self, kind: str | None = None, component: str | None = None
    ) -> list[ProcessInfo]:
        """Every registered, not stopped process (stale ones included), newest first.

        Example::

            for p in await cache.processes.list(component="binance:BTC/USDT"):
                await cache.processes.stop(p.id)
        """
        _, items = await self._list(kind, component, -1)
        return items

    async def latest(self, component: str, kind: str | None = None) -> ProcessInfo | None:
        """The registered process of ``component`` with the newest heartbeat, or None.

        Example::

            feed = await cache.processes.latest("binance:BTC/USDT")
            feed.status if feed else "not running"
        """
        items = await self.list(kind=kind, component=component)
        return items[0] if items else None

    @instrumented("processes.health")
    @redis_errors
    async def health(self, stale_after: timedelta | float | None = None) -> SystemHealth:
        """Totals by kind and status, plus the stale and the errored processes.

        A process is stale when its last heartbeat is older than
        ``stale_after`` (default ``settings.process_stale_after``), measured on
        the server's clock.

        Example::

            report = await cache.processes.health()
            report.by_kind, report.by_status, [p.id for p in report.errored]
        """
        seconds = (
            self.settings.process_stale_after
            if stale_after is None
            else _seconds(stale_after, "stale_after")
        )
        now, items = await self._list(None, None, -1)
        cutoff = now - timedelta(seconds=seconds)
        stale = tuple(p for p in items if p.updated is not None and p.updated < cutoff)
        errored = tuple(p for p in items if p.status is ProcessStatus.ERROR)
        nested: dict[str, Counter[str]] = {}
        for p in items:
            nested.setdefault(p.kind, Counter())[p.status.value] += 1
        return SystemHealth(
            healthy=not stale and not errored,
            total=len(items),
            by_kind={kind: sum(c.values()) for kind, c in sorted(nested.items())},
            by_status=dict(sorted(Counter(p.status.value for p in items).items())),
            by_kind_status={kind: dict(sorted(c.items())) for kind, c in sorted(nested.items())},
            stale=stale,
            errored=errored,
            stale_after=seconds,
            checked=now,
        )

    # --- messages ------------------------------------------------------------------------------

    @staticmethod
    def topic(kind: str) -> str:
        """The event-bus topic of ``broadcast(kind, ...)``: ``"processes:<kind>"``.

        Example::

            >>> ProcessCache.topic("bot")
            'processes:bot'
        """
        return f"{_TOPIC_PREFIX}{_kind(kind)}"

    @instrumented("processes.broadcast")
    async def broadcast(self, kind: str, message: str, data: Any = None) -> int:
        """Send ``message`` (and JSON ``data``) to every process listening on ``kind``.

        Goes through the event bus (``cache.events``) on topic
        ``"processes:<kind>"``: sequence-numbered, kept in a capped backlog,
        so a listener that reconnects is backfilled or told about a gap.
        Returns the message's sequence number. Receive with :meth:`subscribe`.

        Example::

            await cache.processes.broadcast("bot", "reload", {"config": "v2"})
        """
        topic = self.topic(kind)
        payload = {"kind": topic[len(_TOPIC_PREFIX) :], "message": _message(message), "data": data}
        _json(data, "data")  # checked first, so the error names "data"
        return await self._events.publish(topic, payload, type="broadcast")

    def subscribe(self, *kinds: str) -> Subscription:
        """Listen to :meth:`broadcast` messages of ``kinds``; await it or ``async with`` it.

        Yields event-bus :class:`~tradecache.coordination.events.Event` items
        whose ``payload`` is ``{"kind", "message", "data"}`` (and ``Gap`` items
        for messages that could not be delivered).

        Example::

            async with cache.processes.subscribe("bot") as sub:
                async for event in sub:
                    if event.payload["message"] == "reload": ...
        """
        if not kinds:
            raise ValidationError("kinds", "subscribe to at least one kind")
        return self._events.subscribe(*(self.topic(kind) for kind in kinds))
