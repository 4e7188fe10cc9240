"""``cache.orders``: the order queue and the order status records.

**The queue** is a Redis Stream read through consumer groups (see
:mod:`tradecache.stores.streams`): bots ``submit`` orders, executors
``consume`` them, ``ack`` when done, and ``reclaim`` what a crashed executor
left pending::

    entry_id = await cache.orders.submit(order, exchange="binance")
    async for delivery in cache.orders.consume("executors", "executor-1"):
        await place(delivery.item)
        await delivery.ack()

``submit`` is idempotent by ``client_order_id`` (or by ``id`` when the order
has none), checked and enqueued in one Lua script: sending the same order again
(a retry after a timeout) returns the original entry id and enqueues nothing;
the same client order id with different content raises
:class:`~tradecache.errors.KeyReuse`. The marker lives ``settings.order_ttl``.

**Status records** are one hash per order, a field per order field (JSON
values, readable with ``redis-cli HGETALL``), so ``update`` merges fields
atomically in Lua and concurrent updates of different fields never lose each
other. The creation ``timestamp`` is written once and never overwritten;
``last_update_timestamp`` is set on every write. A terminal order (closed,
canceled, rejected, expired) expires ``settings.order_ttl`` seconds after it
became terminal: its own key only, never its neighbours'. The per-exchange
index is a sorted set scored by expiry time, pruned as orders expire::

    await cache.orders.save(ccxt_order, exchange="binance")
    order = await cache.orders.update("binance", "42", status="closed", filled="0.5")
    open_orders = await cache.orders.list("binance", status="open")

Keys (tag ``{exchange}`` keeps an order and its exchange index in one slot)::

    <ns>:order:{<exchange>}:<order id>     hash, field per order field
    <ns>:orders:{<exchange>}               zset of order ids, score = expiry ms
    <ns>:orderq:{queue}                    the queue stream
    <ns>:orderq:{queue}:cid:<ex>:<cid>     idempotency marker of a submitted order
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any, Final

import msgspec

from ..context import Context
from ..errors import KeyReuse, NotFound, NotReplicated, ValidationError, redis_errors
from ..keys import validate_exchange, validate_part
from ..metrics import instrumented
from ..models import Order, OrderSide, OrderStatus, convert, enc_hook, to_ms
from ..replication import check_replicas, run_replicated
from ..scripts import Script
from ._input import to_model
from .streams import Delivery, StreamGroups, decode_id

__all__ = ["OrdersCache"]

_SUBMIT = Script("orders_submit", include=("stream_trim",))
_MERGE = Script("orders_merge")

_JSON: Final = msgspec.json.Encoder(enc_hook=enc_hook, decimal_format="string")
_FIELDS: Final = {f.name: f for f in msgspec.structs.fields(Order)}
_WIRE: Final = {f.encode_name: f.name for f in _FIELDS.values()}
# Identity (part of the key) and the creation time never change through update().
_FIXED: Final = frozenset({"id", "exchange", "timestamp"})
# A valid order that update() applies changes to, only to validate them.
_PROBE: Final = Order(id="probe", symbol="probe", side=OrderSide.BUY, amount=Decimal(1))


def _encode_fields(order: Order) -> list[str | bytes]:
    """Flat ``field, value`` pairs of every set field (status always included)."""
    pairs: list[str | bytes] = []
    for name, info in _FIELDS.items():
        value = getattr(order, name)
        if value is None or value == ():
            continue
        pairs += [info.encode_name, _JSON.encode(value)]
    return pairs


def _decode_fields(raw: Mapping[bytes, bytes] | list[bytes]) -> Order:
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    data = {key.decode(): msgspec.json.decode(value) for key, value in raw.items()}
    return convert(data, Order)


def _status(value: object) -> OrderStatus:
    if isinstance(value, str):
        try:
            return OrderStatus(value)
        except ValueError:
            pass
    allowed = ", ".join(status.value for status in OrderStatus)
    raise ValidationError("status", f"{value!r} is not an order status (one of: {allowed})")


class OrdersCache:
    """The order queue (Stream + consumer groups) and the order status records.

    Build it through the facade (``cache.orders``) or from a context:
    ``OrdersCache(cache.context)``.
    """

    __slots__ = ("_groups", "_queue", "client", "codec", "keys", "metrics", "settings")

    def __init__(self, ctx: Context) -> None:
        self.client: Any = ctx.client  # redis-py types replies as bytes | str | ...
        self.keys = ctx.keys
        self.codec = ctx.codec
        self.settings = ctx.settings
        self.metrics = ctx.metrics
        self._groups: StreamGroups[Order] = StreamGroups(ctx, Order, "orders")
        self._queue = ctx.keys.order_queue()

    def __repr__(self) -> str:
        return f"<OrdersCache namespace={self.keys.namespace!r}>"

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.settings.order_ttl * 1000))

    @staticmethod
    def _order(order: Order | Mapping[str, Any], exchange: str | None) -> Order:
        """Validate ``order`` and give it a normalised (lower-case) exchange."""
        model = to_model(order, Order, exchange, required=True)
        validate_part(model.id, "id")
        if model.client_order_id is not None:
            validate_part(model.client_order_id, "client_order_id")
        return model

    # --- the queue -----------------------------------------------------------------------------

    @instrumented("orders.submit")
    @redis_errors
    async def submit(
        self,
        order: Order | Mapping[str, Any],
        exchange: str | None = None,
        *,
        wait_replicas: int | None = None,
    ) -> str:
        """Enqueue ``order`` once; return its stream entry id.

        Idempotent by ``client_order_id`` (``id`` when there is none): a repeat
        of the same order returns the first entry id and enqueues nothing; the
        same client order id with a different order raises ``KeyReuse``.

        ``wait_replicas=n`` (default ``Settings.wait_replicas``) returns only
        once ``n`` replicas have the order (``WAIT``), so a failover of the
        queue's master cannot lose it; else it raises
        :class:`~tradecache.errors.NotReplicated` with the order enqueued on
        the master: submit it again (idempotent) to wait again.

        Example::

            entry_id = await cache.orders.submit(
                {"id": "b1-7", "clientOrderId": "b1-7", "symbol": "BTC/USDT",
                 "side": "buy", "type": "limit", "amount": "0.1", "price": "60000"},
                exchange="binance",
            )
        """
        model = self._order(order, exchange)
        assert model.exchange is not None
        client_id = model.client_order_id or model.id
        payload = self.codec.encode(model)
        fingerprint = hashlib.sha1(payload).hexdigest()
        replicas = check_replicas(
            self.settings.wait_replicas if wait_replicas is None else wait_replicas
        )
        keys = [self._queue, self.keys.order_submitted(model.exchange, client_id)]
        args: list[str | bytes | int] = [
            fingerprint, payload, self._ttl_ms, self.settings.stream_maxlen, int(replicas > 0),
        ]  # fmt: skip
        if replicas:
            try:
                status, entry_id = await run_replicated(
                    self.client, keys[0], _SUBMIT, keys, args,
                    replicas=replicas, timeout=self.settings.wait_replicas_timeout,
                )  # fmt: skip
            except NotReplicated as exc:
                if exc.reply[0] != -1:
                    raise
                status, entry_id = exc.reply  # nothing written: KeyReuse below
        else:
            status, entry_id = await _SUBMIT(self.client, keys=keys, args=args)
        entry = decode_id(entry_id)
        if status == -1:
            raise KeyReuse(
                f"client order id {client_id!r} on {model.exchange} was already submitted "
                f"with different content (entry {entry})"
            )
        return entry

    async def _queue_keys(self) -> list[list[str]]:
        return [[self._queue]]

    def consume(
        self, group: str, consumer: str, *, count: int = 10, block: float | None = None
    ) -> AsyncIterator[Delivery[Order]]:
        """Iterate over queued orders as ``Delivery[Order]``; ``ack()`` each when done.

        The group is created on first use and starts at the oldest queued order.
        Orders this consumer received before and never acknowledged come first.
        ``block``: seconds to wait while the queue is empty before the iteration
        ends (``None``: forever, ``0``: stop when drained).

        Example::

            async for delivery in cache.orders.consume("executors", "ex-1", block=None):
                await place(delivery.item)
                await delivery.ack()
        """
        return self._groups.consume(self._queue_keys, group, consumer, count=count, block=block)

    @instrumented("orders.reclaim")
    async def reclaim(
        self, group: str, consumer: str, min_idle: float, *, count: int = 100
    ) -> list[Delivery[Order]]:
        """Take over orders pending in ``group`` for at least ``min_idle`` seconds.

        Use it for the orders of an executor that died: they become this
        consumer's, to execute and ``ack``.

        Example::

            for delivery in await cache.orders.reclaim("executors", "ex-2", min_idle=30):
                await place(delivery.item)
                await delivery.ack()
        """
        return await self._groups.reclaim(
            [self.keys.order_queue()], group, consumer, min_idle, count=count
        )

    @instrumented("orders.pending")
    async def pending(self, group: str) -> int:
        """Number of orders delivered to ``group`` and not acknowledged yet.

        Example: ``assert await cache.orders.pending("executors") == 0``
        """
        return await self._groups.pending([self.keys.order_queue()], group)

    # --- status records ------------------------------------------------------------------------

    @instrumented("orders.save")
    @redis_errors
    async def save(self, order: Order | Mapping[str, Any], exchange: str | None = None) -> None:
        """Store (create or merge) an order's status record; accepts ccxt order dicts.

        Every field the order carries is written; fields it lacks (``None``)
        keep their stored value. The creation ``timestamp`` is never
        overwritten. A terminal order starts its ``order_ttl`` countdown.

        Example::

            for o in await exchange.watch_orders():
                await cache.orders.save(o, exchange="binance")
        """
        model = self._order(order, exchange)
        assert model.exchange is not None
        await _MERGE(
            self.client,
            keys=[
                self.keys.order(model.exchange, model.id),
                self.keys.order_index(model.exchange),
            ],
            args=[
                "save",
                model.id,
                "1" if model.is_terminal else "0",
                self._ttl_ms,
                *_encode_fields(model),
            ],
        )

    @instrumented("orders.update")
    @redis_errors
    async def update(self, exchange: str, order_id: str, /, **changes: Any) -> Order:
        """Merge ``changes`` into a stored order atomically; return the merged order.

        Field names are the ``Order`` attributes (snake_case; ccxt camelCase
        works too). ``None`` clears an optional field. ``id``, ``exchange`` and
        the creation ``timestamp`` cannot change. Raises ``NotFound`` for an
        unknown (or expired) order and ``ValidationError`` for a bad change,
        writing nothing.

        Example::

            order = await cache.orders.update("binance", "42", status="canceled")
            order = await cache.orders.update("binance", "42", filled="0.3", average=60010)
        """
        exchange = validate_exchange(exchange)
        order_id = validate_part(order_id, "order_id")
        if not changes:
            raise ValidationError("changes", "nothing to update")
        named: dict[str, Any] = {}
        for key, value in changes.items():
            name = _WIRE.get(key, key)
            if name not in _FIELDS:
                raise ValidationError(key, "unknown field of Order")
            if name in _FIXED:
                raise ValidationError(name, "cannot be changed by update()")
            named[name] = value
        cleared = [name for name, value in named.items() if value is None]
        for name in cleared:
            if _FIELDS[name].required or name == "status":
                raise ValidationError(name, "required: cannot be cleared")
        probe = _PROBE.replace(**{k: v for k, v in named.items() if v is not None})
        pairs: list[str | bytes] = []
        for name in named:
            value = getattr(probe, name)
            pairs.append(_FIELDS[name].encode_name)
            pairs.append(b"" if name in cleared or value == () else _JSON.encode(value))
        terminal = ""
        if "status" in named:
            terminal = "1" if probe.is_terminal else "0"
        reply = await _MERGE(
            self.client,
            keys=[self.keys.order(exchange, order_id), self.keys.order_index(exchange)],
            args=["update", order_id, terminal, self._ttl_ms, *pairs],
        )
        if reply is None:
            raise NotFound(f"no order {order_id!r} on {exchange}")
        return _decode_fields(reply)

    @instrumented("orders.get")
    @redis_errors
    async def get(self, exchange: str, order_id: str) -> Order | None:
        """The stored order, or ``None``.

        Example: ``order = await cache.orders.get("binance", "42")``
        """
        raw = await self.client.hgetall(self.keys.order(exchange, order_id))
        return _decode_fields(raw) if raw else None

    @instrumented("orders.list")
    @redis_errors
    async def list(self, exchange: str, status: OrderStatus | str | None = None) -> list[Order]:
        """Every stored order of ``exchange`` (optionally of one ``status``), oldest first.

        Read from the exchange's index, never by SCAN; expired orders are gone.
        ``"cancelled"`` is read as ``"canceled"``.

        Example: ``open_orders = await cache.orders.list("binance", status="open")``
        """
        wanted = None if status is None else _status(status)
        ids = await self.client.zrange(self.keys.order_index(exchange), 0, -1)
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for raw_id in ids:
            pipe.hgetall(self.keys.order(exchange, raw_id.decode()))
        orders = [_decode_fields(raw) for raw in await pipe.execute() if raw]
        if wanted is not None:
            orders = [order for order in orders if order.status == wanted]
        orders.sort(key=lambda o: (to_ms(o.timestamp) if o.timestamp else 0, o.id))
        return orders
