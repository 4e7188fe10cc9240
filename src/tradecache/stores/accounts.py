"""``cache.accounts``: balances per account and currency, positions per account and symbol.

Each account has one hash of balances (a field per currency) and one hash of
positions (a field per symbol). Every write sets whole fields with ``HSET`` (or
replaces the hash in one Lua script), so two writers of different symbols, or
different currencies, never lose each other's data: there is no
read-modify-write anywhere::

    await cache.accounts.set_balances("main", await exchange.fetch_balance())
    usdt = await cache.accounts.get_balance("main", "USDT")       # Balance | None

    for p in await exchange.fetch_positions():
        await cache.accounts.set_position("main", p)               # ccxt dicts as they come
    await cache.accounts.set_positions("main", positions, replace=True)  # exact snapshot
    btc = await cache.accounts.get_position("main", "BTC/USDT:USDT")     # Position | None
    everything = await cache.accounts.all_positions()          # {account: [Position, ...]}

Money fields are ``Decimal`` and a position keeps its ``side``. An account is a
free-form name (``"binance-main"``, a user id ...), validated like any key part.

Keys (one slot per account; the index is read by ``all_positions``, no SCAN)::

    <ns>:balances:{<account>}    hash currency -> Balance
    <ns>:positions:{<account>}   hash symbol -> Position
    <ns>:posaccts:{index}        set of accounts that have had positions
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..context import Context
from ..errors import ValidationError, redis_errors
from ..keys import validate_part, validate_symbol
from ..metrics import instrumented
from ..models import Balance, Position, balances_from_ccxt
from ..scripts import Script, ScriptBatch
from ._input import to_model

__all__ = ["AccountCache"]

_REPLACE = Script("hash_replace")

PositionInput = Position | Mapping[str, Any]


class AccountCache:
    """Balances and positions of trading accounts.

    Build it through the facade (``cache.accounts``) or from a context:
    ``AccountCache(cache.context)``.
    """

    __slots__ = ("_indexed", "client", "codec", "keys", "metrics", "settings")

    def __init__(self, ctx: Context) -> None:
        self.client: Any = ctx.client  # redis-py types replies as bytes | str | ...
        self.keys = ctx.keys
        self.codec = ctx.codec
        self.settings = ctx.settings
        self.metrics = ctx.metrics
        # accounts this instance has put in the account index (see set_position)
        self._indexed: set[str] = set()

    def __repr__(self) -> str:
        return f"<AccountCache namespace={self.keys.namespace!r}>"

    def _write(
        self, key: str, fields: dict[str, bytes], replace: bool, index: str | None = None
    ) -> ScriptBatch:
        """Queue the write of ``fields`` (and the index entry) as one pipeline."""
        batch = ScriptBatch(self.client)
        if replace:
            args: list[str | bytes] = [part for item in fields.items() for part in item]
            batch.call(_REPLACE, keys=[key], args=args)
        else:
            batch.pipe.hset(key, mapping=fields)
        if index is not None and fields:
            batch.pipe.sadd(self.keys.position_accounts(), index)
        return batch

    # --- balances ------------------------------------------------------------------------------

    @instrumented("accounts.set_balances")
    @redis_errors
    async def set_balances(
        self,
        account: str,
        balances: Mapping[str, Any] | Iterable[Balance],
        *,
        replace: bool = False,
    ) -> int:
        """Store balances of ``account``; return how many currencies were written.

        ``balances`` is a ccxt balance structure (``fetch_balance()``,
        ``watch_balance()``), a mapping of currency to ``Balance``/dict, or
        ``Balance`` objects. Currencies not given keep their stored value,
        unless ``replace=True``, which swaps the whole set atomically.

        Example::

            await cache.accounts.set_balances("main", {"USDT": {"free": 90, "used": 10,
                                                                "total": 100}})
        """
        key = self.keys.balances(account)
        if isinstance(balances, Mapping):
            parsed = balances_from_ccxt(balances)
        else:
            parsed = {}
            for index, balance in enumerate(balances):
                if not isinstance(balance, Balance):
                    raise ValidationError(
                        f"[{index}]", f"expected a Balance, not {type(balance).__name__}"
                    )
                parsed[balance.currency] = balance
        fields = {
            validate_part(code, "currency"): self.codec.encode(balance)
            for code, balance in parsed.items()
        }
        if fields or replace:
            await self._write(key, fields, replace).execute()
        return len(fields)

    @instrumented("accounts.get_balance")
    @redis_errors
    async def get_balance(self, account: str, currency: str) -> Balance | None:
        """The balance of one currency, or ``None``.

        Example: ``usdt = await cache.accounts.get_balance("main", "USDT")``
        """
        raw = await self.client.hget(
            self.keys.balances(account), validate_part(currency, "currency")
        )
        return None if raw is None else self.codec.decode(raw, Balance)

    @instrumented("accounts.get_balances")
    @redis_errors
    async def get_balances(self, account: str) -> dict[str, Balance]:
        """Every balance of ``account`` by currency (empty when none).

        Example::

            free = {c: b.free for c, b in (await cache.accounts.get_balances("main")).items()}
        """
        raw = await self.client.hgetall(self.keys.balances(account))
        return {
            code.decode(): self.codec.decode(data, Balance) for code, data in sorted(raw.items())
        }

    # --- positions -----------------------------------------------------------------------------

    @staticmethod
    def _position(position: object) -> Position:
        item = to_model(position, Position, None, required=False)
        validate_symbol(item.symbol)
        return item

    @instrumented("accounts.set_position")
    @redis_errors
    async def set_position(self, account: str, position: PositionInput) -> None:
        """Store one position (a ccxt position dict or a ``Position``) under its symbol.

        Only that symbol's field is written: concurrent writers of other symbols
        are never overwritten. Usually a single ``HSET``: the account index is
        written in the same round trip the first time this instance writes the
        account, and again after creating a new symbol field (which restores an
        index entry lost with the data, e.g. by a restart without persistence).

        Example::

            await cache.accounts.set_position("main", {"symbol": "BTC/USDT:USDT",
                "side": "long", "contracts": "0.5", "entryPrice": "60000"})
        """
        key = self.keys.positions(account)
        item = self._position(position)
        data = self.codec.encode(item)
        if account in self._indexed:
            # Steady state: one HSET. A new field means the hash may have been lost
            # with its index entry (a restart without persistence): index it again.
            if await self.client.hset(key, item.symbol, data):
                await self.client.sadd(self.keys.position_accounts(), account)
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, item.symbol, data)
        pipe.sadd(self.keys.position_accounts(), account)
        await pipe.execute()
        self._indexed.add(account)

    @instrumented("accounts.set_positions")
    @redis_errors
    async def set_positions(
        self, account: str, positions: Iterable[PositionInput], *, replace: bool = False
    ) -> int:
        """Store many positions in one round trip; return how many.

        With ``replace=True`` the account's positions become exactly these, in
        one atomic step (an empty list removes them all). Two positions with
        the same symbol are rejected.

        Example::

            await cache.accounts.set_positions("main", await ex.fetch_positions(), replace=True)
        """
        key = self.keys.positions(account)
        fields: dict[str, bytes] = {}
        for index, position in enumerate(positions):
            try:
                item = self._position(position)
            except ValidationError as exc:
                raise ValidationError(f"[{index}].{exc.field}", exc.reason) from None
            if item.symbol in fields:
                raise ValidationError(f"[{index}].symbol", f"duplicate symbol {item.symbol!r}")
            fields[item.symbol] = self.codec.encode(item)
        if fields or replace:
            await self._write(key, fields, replace, index=account).execute()
        return len(fields)

    @instrumented("accounts.get_position")
    @redis_errors
    async def get_position(self, account: str, symbol: str) -> Position | None:
        """The position of ``account`` in ``symbol``, or ``None``.

        Example: ``p = await cache.accounts.get_position("main", "BTC/USDT:USDT")``
        """
        raw = await self.client.hget(self.keys.positions(account), validate_symbol(symbol))
        return None if raw is None else self.codec.decode(raw, Position)

    @instrumented("accounts.positions")
    @redis_errors
    async def positions(self, account: str) -> list[Position]:
        """Every position of ``account`` (and only of it), by symbol.

        Example: ``for p in await cache.accounts.positions("main"): print(p.symbol, p.side)``
        """
        raw = await self.client.hgetall(self.keys.positions(account))
        return [self.codec.decode(raw[symbol], Position) for symbol in sorted(raw)]

    @instrumented("accounts.all_positions")
    @redis_errors
    async def all_positions(self) -> dict[str, list[Position]]:
        """Positions of every account, ``{account: [Position, ...]}``; accounts without any omitted.

        Read from the account index (one round trip for the index, one for all
        accounts), never by SCAN.

        Example: ``for account, ps in (await cache.accounts.all_positions()).items(): ...``
        """
        accounts = sorted(
            m.decode() for m in await self.client.smembers(self.keys.position_accounts())
        )
        if not accounts:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for account in accounts:
            pipe.hgetall(self.keys.positions(account))
        result: dict[str, list[Position]] = {}
        for account, raw in zip(accounts, await pipe.execute(), strict=True):
            if raw:
                result[account] = [self.codec.decode(raw[s], Position) for s in sorted(raw)]
        return result

    @instrumented("accounts.delete_position")
    @redis_errors
    async def delete_position(self, account: str, symbol: str) -> bool:
        """Remove one position; True if it existed.

        Example: ``await cache.accounts.delete_position("main", "BTC/USDT:USDT")``
        """
        return bool(await self.client.hdel(self.keys.positions(account), validate_symbol(symbol)))
