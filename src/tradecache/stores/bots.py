"""Bot coordination (``cache.bots``): symbol claims, opening-position marks, status documents.

A **claim** gives one bot exclusive use of an (exchange, symbol). It is a
lease from :mod:`tradecache.coordination.lock`: an owner token, a TTL renewed
while held, a fencing token and loss detection::

    async with cache.bots.claim("binance", "BTC/USDT", "grid-1", ttl=30) as claim:
        claim.fence                # strictly increasing per (exchange, symbol)
        claim.ensure_held()        # raises LockLost once the claim may have run out
        ...                        # trade
    # released here; a crashed bot's claim expires after ttl seconds

A second bot gets :class:`~tradecache.errors.Claimed` naming the holder, or
waits up to ``wait`` seconds (woken by push when the claim is released).
The reference library "blocked" a symbol with a plain HSET: no owner, no TTL,
no exclusion (10 bots racing all believed they held it; a crashed bot's block
stayed forever). Here exactly one bot holds a claim at any moment.

Layout (``keys.py``): every key under the hash tag ``{bots}`` (one slot), so
the claim scripts keep a claim index (a sorted set scored by expiry) in the
same atomic step; :meth:`BotCache.claims` reads it in one round trip, never
with a SCAN, and prunes entries of expired claims.

Opening marks (``mark_opening``) are strings with a TTL, owned by a bot:
another bot can neither overwrite nor remove them. Status documents are one
hash of :class:`~tradecache.models.BotStatus` by bot id, each stamped with its
update time; the caller's mapping is never mutated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from ..context import Context
from ..coordination.lock import Lease, Lock, LockManager, LockSpec, OnLost
from ..errors import Claimed, ValidationError, WaitTimeout, redis_errors
from ..keys import validate_exchange, validate_part, validate_symbol
from ..metrics import instrumented
from ..models import BotStatus
from ..scripts import Script

__all__ = ["BotCache", "Claim", "ClaimInfo"]

CLAIMS: Final = Script("bot_claims")
MARK_OPENING: Final = Script("bot_mark_opening")
UNMARK_OPENING: Final = Script("bot_unmark_opening")

# BotStatus fields a status mapping may set (either spelling); other keys go to ``data``.
_STATUS_FIELDS: Final = frozenset({"status", "exchange", "symbol", "message"})
_IGNORED: Final = frozenset({"updated", "data", "bot_id", "botId"})
# Validated (exchange, symbol) pairs and their claim keys remembered per store; cleared
# when full (a safety valve for callers passing ever-new strings, not a limit on claims).
_MAX_REMEMBERED: Final = 4096


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class ClaimInfo:
    """A live claim as :meth:`BotCache.claims` lists it (``ttl``: seconds left)."""

    exchange: str
    symbol: str
    bot_id: str
    fence: int
    ttl: float


class Claim:
    """A bot's claim on an (exchange, symbol): a :class:`~tradecache.coordination.lock.Lease`.

    ``fence``, ``lost`` (an :class:`asyncio.Event`), ``held``, ``lost_reason``,
    ``ensure_held()``, ``remaining()``, ``fenced_set()`` and ``release()``
    are the lease's; ``lease`` is the lease itself.

    Example::

        claim = await cache.bots.claim("binance", "ETH/USDT", "bot-7")
        try:
            claim.ensure_held()
        finally:
            await claim.release()
    """

    __slots__ = ("bot_id", "exchange", "lease", "symbol")

    def __init__(self, lease: Lease, exchange: str, symbol: str, bot_id: str) -> None:
        self.lease = lease
        self.exchange = exchange
        self.symbol = symbol
        self.bot_id = bot_id

    def __repr__(self) -> str:
        state = "held" if self.held else "not held"
        return (
            f"<Claim {self.exchange}:{self.symbol} bot={self.bot_id!r} fence={self.fence} {state}>"
        )

    @property
    def fence(self) -> int:
        """The fencing token of this grant (strictly increasing per exchange and symbol).

        Example: ``await store.write(order, fence=claim.fence)``
        """
        return self.lease.fence

    @property
    def lost(self) -> asyncio.Event:
        """An :class:`asyncio.Event`, set once the claim is lost (expired or taken over).

        Example: ``await claim.lost.wait()  # in a task that stops the trading loop``
        """
        return self.lease.lost

    @property
    def lost_reason(self) -> str | None:
        """Why the claim was lost, or ``None``.

        Example: ``log.warning("claim lost: %s", claim.lost_reason)``
        """
        return self.lease.lost_reason

    @property
    def held(self) -> bool:
        """True while neither released nor lost, and the local deadline has not passed.

        Example: ``while claim.held: await step()``
        """
        return self.lease.held

    def remaining(self) -> float:
        """Seconds until the local deadline of the claim.

        Example: ``if claim.remaining() < 2: finish_quickly()``
        """
        return self.lease.remaining()

    def ensure_held(self) -> None:
        """Raise :class:`~tradecache.errors.LockLost` unless the claim is still held.

        Example: ``claim.ensure_held()`` before sending an order for the symbol.
        """
        self.lease.ensure_held()

    async def fenced_set(
        self, key: str, value: bytes | str | int | float, ttl: float | None = None
    ) -> None:
        """A fenced write under this claim's fence (see ``Lease.fenced_set``).

        Example: ``await claim.fenced_set(cache.keys.key("plan", "BTC"), plan_json)``
        """
        await self.lease.fenced_set(key, value, ttl)

    async def release(self) -> bool:
        """Release the claim; True if it was held right up to this release.

        Example: ``await claim.release()``
        """
        return await self.lease.release()

    async def __aenter__(self) -> Claim:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.lease.__aexit__(exc_type, exc, tb)


class _Claiming:
    """What :meth:`BotCache.claim` returns: awaitable, and an async context manager."""

    __slots__ = ("_acquire", "_claim")

    def __init__(self, acquire: Any) -> None:
        self._acquire = acquire
        self._claim: Claim | None = None

    def __await__(self) -> Generator[Any, None, Claim]:
        claim: Claim = yield from self._acquire().__await__()
        return claim

    async def __aenter__(self) -> Claim:
        self._claim = await self._acquire()
        return self._claim

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        claim, self._claim = self._claim, None
        assert claim is not None  # __aexit__ only runs after __aenter__ returned
        await claim.__aexit__(exc_type, exc, tb)


class BotCache:
    """Claims, opening marks and status documents of trading bots.

    Built by the facade as ``cache.bots``; by hand::

        bots = BotCache(cache.context, cache.locks)
    """

    def __init__(self, ctx: Context, locks: LockManager | None = None) -> None:
        self.ctx = ctx
        self.client = ctx.client
        self.keys = ctx.keys
        self.codec = ctx.codec
        self.metrics = ctx.metrics
        self._owns_locks = locks is None
        self.locks = LockManager(ctx) if locks is None else locks
        self._specs: dict[tuple[object, object], tuple[str, str, LockSpec]] = {}

    def __repr__(self) -> str:
        return f"<BotCache {self.keys.namespace!r}>"

    async def aclose(self) -> None:
        """Close the lock machinery if this store made its own (the facade shares its own).

        Example: ``bots = BotCache(ctx); ...; await bots.aclose()``
        """
        if self._owns_locks:
            await self.locks.aclose()

    # --- claims ----------------------------------------------------------------------------

    def _claim_spec(self, exchange: object, symbol: object) -> tuple[str, str, LockSpec]:
        """Validated ``(exchange, symbol)`` and the keys of their claim, remembered per pair."""
        try:
            return self._specs[exchange, symbol]
        except (KeyError, TypeError):  # TypeError: unhashable input, rejected just below
            pass
        ex, sym = validate_exchange(exchange), validate_symbol(symbol)
        keys = self.keys
        spec = LockSpec(
            name=f"{ex}:{sym}",
            key=keys.bot_claim(ex, sym),
            fence_key=keys.bot_claim_fence(ex, sym),
            queue=keys.bot_claim_queue(ex, sym),
            channel=keys.bot_claim_channel(ex, sym),
            index=keys.bot_claims(),
            member=f"{ex}:{sym}",
        )
        if len(self._specs) >= _MAX_REMEMBERED:
            self._specs.clear()
        found = self._specs[exchange, symbol] = (ex, sym, spec)
        return found

    def claim(
        self,
        exchange: str,
        symbol: str,
        bot_id: str,
        ttl: float = 30.0,
        wait: float | None = 0,
        on_lost: OnLost | None = None,
        *,
        wait_replicas: int | None = None,
    ) -> _Claiming:
        """Claim ``symbol`` on ``exchange`` for ``bot_id``: ``async with`` it, or await it.

        Exclusive; renewed every ``ttl/3`` while held; expires ``ttl`` seconds
        after the bot died. ``wait=0`` tries once, ``wait=s`` waits up to ``s``
        seconds, ``wait=None`` until it gets it. Raises
        :class:`~tradecache.errors.Claimed` (with ``holder``, the other bot)
        when the claim stays taken. ``on_lost(lease)`` runs once if it is lost.
        ``wait_replicas=n`` (default ``Settings.wait_replicas``): the claim is
        granted only once ``n`` replicas have it, else it is released and
        :class:`~tradecache.errors.NotReplicated` is raised.

        Example::

            try:
                async with cache.bots.claim("binance", "BTC/USDT", "grid-1") as claim:
                    await trade(claim)
            except Claimed as busy:
                log.info("BTC/USDT is traded by %s", busy.holder)
        """
        exchange, symbol, spec = self._claim_spec(exchange, symbol)
        bot_id = validate_part(bot_id, "bot_id")
        lock = Lock(
            self.locks, spec, ttl=ttl, wait=wait, on_lost=on_lost, owner=bot_id,
            wait_replicas=wait_replicas,
        )  # fmt: skip

        async def acquire() -> Claim:
            return await self._acquire(lock, exchange, symbol, bot_id)

        return _Claiming(acquire)

    @instrumented("bots.claim")
    async def _acquire(self, lock: Lock, exchange: str, symbol: str, bot_id: str) -> Claim:
        try:
            lease = await lock.acquire()
        except WaitTimeout:
            holder = await self.holder(exchange, symbol)
            raise Claimed(f"{exchange}:{symbol}", holder) from None
        return Claim(lease, exchange, symbol, bot_id)

    @instrumented("bots.holder")
    @redis_errors
    async def holder(self, exchange: str, symbol: str) -> str | None:
        """The bot holding the claim on (exchange, symbol), or ``None``.

        Example: ``await cache.bots.holder("binance", "BTC/USDT")  # 'grid-1'``
        """
        owner = await self.client.hget(self.keys.bot_claim(exchange, symbol), "owner")
        return None if owner is None else _text(owner)

    @instrumented("bots.claims")
    async def claims(self, exchange: str | None = None) -> list[ClaimInfo]:
        """Every live claim (of one exchange, if given), from the claim index.

        Example::

            for c in await cache.bots.claims("binance"):
                print(c.symbol, c.bot_id, c.fence, c.ttl)
        """
        if exchange is not None:
            exchange = validate_exchange(exchange)
        rows = await CLAIMS(self.client, [self.keys.bot_claims()], [self.keys.bot_claim_prefix()])
        found = []
        for member, owner, fence, pttl in rows:
            ex, _, symbol = _text(member).partition(":")
            if exchange is None or ex == exchange:
                found.append(ClaimInfo(ex, symbol, _text(owner), int(fence), int(pttl) / 1000))
        return sorted(found, key=lambda c: (c.exchange, c.symbol))

    # --- opening-position marks ------------------------------------------------------------

    @instrumented("bots.mark_opening")
    async def mark_opening(
        self, exchange: str, symbol: str, bot_id: str, ttl: float = 60.0
    ) -> None:
        """Mark that ``bot_id`` is opening a position on (exchange, symbol), for ``ttl`` s.

        The same bot may mark again (the TTL restarts); another bot's mark
        raises :class:`~tradecache.errors.Claimed` and is left alone.

        Example: ``await cache.bots.mark_opening("binance", "BTC/USDT", "grid-1", ttl=30)``
        """
        key = self.keys.bot_opening(exchange, symbol)
        bot_id = validate_part(bot_id, "bot_id")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0.001 <= ttl < 1e9:
            raise ValidationError("ttl", "must be a number of seconds >= 0.001")
        reply = await MARK_OPENING(self.client, [key], [bot_id, max(1, round(ttl * 1000))])
        if reply[0] != 1:
            raise Claimed(f"{validate_exchange(exchange)}:{symbol}", _text(reply[1]))

    @instrumented("bots.is_opening")
    @redis_errors
    async def is_opening(self, exchange: str, symbol: str) -> bool:
        """True while a bot's opening mark on (exchange, symbol) is alive.

        Example: ``if await cache.bots.is_opening("binance", "BTC/USDT"): skip()``
        """
        return bool(await self.client.exists(self.keys.bot_opening(exchange, symbol)))

    @instrumented("bots.opening_by")
    @redis_errors
    async def opening_by(self, exchange: str, symbol: str) -> str | None:
        """The bot whose opening mark is on (exchange, symbol), or ``None``.

        Example: ``await cache.bots.opening_by("binance", "BTC/USDT")  # 'grid-1'``
        """
        bot = await self.client.get(self.keys.bot_opening(exchange, symbol))
        return None if bot is None else _text(bot)

    @instrumented("bots.unmark_opening")
    async def unmark_opening(self, exchange: str, symbol: str, bot_id: str) -> bool:
        """Remove ``bot_id``'s opening mark; False when there was none.

        Another bot's mark raises :class:`~tradecache.errors.Claimed` and stays.

        Example: ``await cache.bots.unmark_opening("binance", "BTC/USDT", "grid-1")``
        """
        key = self.keys.bot_opening(exchange, symbol)
        bot_id = validate_part(bot_id, "bot_id")
        reply = await UNMARK_OPENING(self.client, [key], [bot_id])
        if len(reply) > 1:
            raise Claimed(f"{validate_exchange(exchange)}:{symbol}", _text(reply[1]))
        return bool(reply[0] == 1)

    # --- status documents ------------------------------------------------------------------

    @instrumented("bots.set_status")
    @redis_errors
    async def set_status(self, bot_id: str, mapping: Mapping[str, Any] | BotStatus) -> BotStatus:
        """Store ``bot_id``'s status, stamped with the time now; returns what was stored.

        ``status``, ``exchange``, ``symbol`` and ``message`` (and ``data``) fill
        those fields; any other key goes into ``data`` (stored as JSON: a
        ``Decimal`` comes back as a string). The mapping is copied, never changed.

        Example::

            await cache.bots.set_status("grid-1", {"status": "trading", "symbol": "BTC/USDT",
                                                   "pnl": "12.5"})   # data={"pnl": "12.5"}
        """
        bot_id = validate_part(bot_id, "bot_id")
        source = mapping.to_dict() if isinstance(mapping, BotStatus) else mapping
        if not isinstance(source, Mapping):
            raise ValidationError("mapping", f"must be a mapping, not {type(source).__name__}")
        for name in ("bot_id", "botId"):
            if source.get(name) not in (None, bot_id):
                raise ValidationError("bot_id", f"the mapping names another bot: {source[name]!r}")
        data = dict(source.get("data") or {})
        fields: dict[str, Any] = {"bot_id": bot_id}
        for name, value in source.items():
            if name in _STATUS_FIELDS:
                fields[name] = value
            elif name not in _IGNORED:
                data[name] = value
        status = BotStatus.from_ccxt({**fields, "data": data})  # stamps ``updated``
        await self.client.hset(self.keys.bot_status(), bot_id, self.codec.encode(status))
        return status

    @instrumented("bots.get_status")
    @redis_errors
    async def get_status(self, bot_id: str) -> BotStatus | None:
        """The last status ``bot_id`` stored, or ``None``.

        Example: ``(await cache.bots.get_status("grid-1")).updated``
        """
        data = await self.client.hget(self.keys.bot_status(), validate_part(bot_id, "bot_id"))
        return None if data is None else self.codec.decode(data, BotStatus)

    @instrumented("bots.all_status")
    @redis_errors
    async def all_status(self) -> dict[str, BotStatus]:
        """Every bot's status, by bot id (one round trip).

        Example: ``{bot: s.status for bot, s in (await cache.bots.all_status()).items()}``
        """
        rows = await self.client.hgetall(self.keys.bot_status())
        return {_text(bot): self.codec.decode(data, BotStatus) for bot, data in rows.items()}

    @instrumented("bots.delete_status")
    @redis_errors
    async def delete_status(self, bot_id: str) -> bool:
        """Delete ``bot_id``'s status; False when it had none.

        Example: ``await cache.bots.delete_status("grid-1")``
        """
        key = self.keys.bot_status()
        return bool(await self.client.hdel(key, validate_part(bot_id, "bot_id")))
