"""The whole key and channel schema, and nothing else.

Every Redis key and pub/sub channel tradecache touches is built here, so the
layout can be read (and audited for Cluster safety) in one place. A key is::

    <namespace>:<kind>:{<hash tag>}[:<rest>]

* The namespace isolates deployments and tests sharing one server.
* The ``{hash tag}`` decides the Cluster slot. Keys that one atomic operation
  (a Lua script, a MULTI) touches together share the same tag, so every
  multi-key operation stays in one slot.
* User-supplied parts (exchange, symbol, ids, names) are validated: no input
  can add a brace, a glob character, whitespace or a newline to a key, so no
  input can change a key's slot, match someone else's keys in a SCAN, or
  escape its namespace.

Example::

    keys = Keys("prod")
    keys.key("lock", "rebalance")            # 'prod:lock:{rebalance}'
    keys.key("ticker", "binance", "BTC/USDT")  # 'prod:ticker:{binance}:BTC/USDT'
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ValidationError

__all__ = [
    "MAX_PART_LENGTH",
    "Keys",
    "validate_exchange",
    "validate_part",
    "validate_symbol",
]

MAX_PART_LENGTH: Final = 200

# Braces move a key to another slot, * ? [ ] \ are glob syntax in SCAN/PSUBSCRIBE,
# whitespace and control characters break logs and the wire protocol of old clients.
_FORBIDDEN = re.compile(r"[{}*?\[\]\\\s\x00-\x1f\x7f-\x9f]")
_EXCHANGE = re.compile(r"[A-Za-z0-9_.\-]+")


def validate_part(value: object, field: str, *, max_length: int = MAX_PART_LENGTH) -> str:
    """Return ``value`` if it is safe inside a key, else raise ``ValidationError(field)``.

    >>> validate_part("BTC/USDT:USDT", "symbol")
    'BTC/USDT:USDT'
    """
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a str, not {type(value).__name__}")
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > max_length:
        raise ValidationError(field, f"longer than {max_length} characters")
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        raise ValidationError(field, f"contains the forbidden character {bad.group()!r}")
    return value


def validate_exchange(value: object, field: str = "exchange") -> str:
    """An exchange id: ccxt style, ``[A-Za-z0-9_.-]``, at most 64 characters.

    Exchange ids are lower-cased, so ``"Binance"`` and ``"binance"`` are one exchange.
    """
    text = validate_part(value, field, max_length=64)
    if not _EXCHANGE.fullmatch(text):
        raise ValidationError(field, "only letters, digits, '_', '.' and '-' are allowed")
    return text.lower()


def validate_symbol(value: object, field: str = "symbol") -> str:
    """A market symbol (``BTC/USDT``, ``BTC/USDT:USDT``, ``ETH-PERP``), at most 100 chars."""
    return validate_part(value, field, max_length=100)


def _timeframe(value: object) -> str:
    return validate_part(value, "timeframe", max_length=8)


class Keys:
    """The key schema of one namespace.

    Methods return ``str`` keys; redis-py encodes them. Methods that take user
    input validate it and raise :class:`~tradecache.errors.ValidationError`.
    """

    __slots__ = ("namespace", "prefix")

    def __init__(self, namespace: str = "tc") -> None:
        validate_exchange(namespace, "namespace")
        self.namespace = namespace
        self.prefix = namespace + ":"

    def __repr__(self) -> str:
        return f"Keys(namespace={self.namespace!r})"

    # --- building blocks -------------------------------------------------------------------

    def key(self, kind: str, tag: str, *rest: str) -> str:
        """``<ns>:<kind>:{<tag>}[:<rest>...]``; parts must be validated by the caller."""
        tail = ":".join(rest)
        return f"{self.prefix}{kind}:{{{tag}}}" + (":" + tail if tail else "")

    def channel(self, kind: str, tag: str, *rest: str) -> str:
        """A pub/sub channel, laid out like a key (sharded pub/sub routes by its tag)."""
        return self.key("ch:" + kind, tag, *rest)

    def pattern(self, kind: str) -> str:
        """A SCAN MATCH pattern for every key of ``kind`` in this namespace."""
        return f"{self.prefix}{kind}:*"

    def all_pattern(self) -> str:
        """A SCAN MATCH pattern for every key of this namespace."""
        return self.prefix + "*"

    # --- tickers (stores/tickers.py) -------------------------------------------------------
    #
    # One hash per exchange (field: symbol, value: the JSON envelope last published for it),
    # its sequence counter and its channel, all tagged ``{<exchange>}`` so a ticker update
    # (HSET + INCRBY + PUBLISH/SPUBLISH) is one Lua script in one slot. Chosen over one key
    # per symbol because:
    # * ``get_all(exchange)`` is one HGETALL, not an index read plus an MGET fanned out over
    #   as many slots as there are symbols (on a Cluster: hundreds of commands per call);
    # * the exchange's sequence number and channel live in the same slot as its tickers, so
    #   a watcher of an exchange sees one ordered stream it can check for gaps;
    # * the cost is one slot per exchange: on a Cluster a busy exchange's tickers live on
    #   one master. Measured (benchmarks/bench_hot_keys.py, BENCHMARKS.md "Hot keys"):
    #   spreading one busy exchange over 3 or 16 slots changed throughput by -6 % to
    #   +17 % with 1-4 writers on 2 cores, the hot master stayed under 71 % CPU (a ceiling
    #   of ~220k tickers/s), get_all got 1.6-2.5x slower, and buckets would split the
    #   exchange's one ordered sequence. So: one slot per exchange (issue 7 decision);
    #   revisit only for a single exchange feed above ~100k updates/s.
    # The set of exchanges is a small index set (``ticker_exchanges``), never a SCAN.

    def ticker_hash(self, exchange: str) -> str:
        """Hash of an exchange's latest tickers: field = symbol, value = last envelope."""
        return self.key("ticker", validate_exchange(exchange))

    def ticker_seq(self, exchange: str) -> str:
        """Sequence counter of an exchange's ticker stream (never reset, never expires)."""
        return self.key("ticker", validate_exchange(exchange), "seq")

    def ticker_channel(self, exchange: str) -> str:
        """Channel every ticker update of ``exchange`` is published on (same slot as its hash)."""
        return self.channel("ticker", validate_exchange(exchange))

    def ticker_exchanges(self) -> str:
        """Set of the exchange ids that ever stored a ticker (``tickers.exchanges()``)."""
        return self.key("ticker-index", "exchanges")

    # --- OHLCV (stores/ohlcv.py) -----------------------------------------------------------
    #
    # One sorted set per (exchange, symbol, timeframe): score = open time (epoch ms), member =
    # the candle's JSON array, so ``latest``/``range`` are one ZRANGE and an upsert replaces
    # the member of a timestamp. The series, its sequence counter and its channel share the
    # tag ``{<exchange>:<symbol>}``: every timeframe of a symbol is in one slot, and series
    # of different symbols spread over the Cluster.

    def ohlcv(self, exchange: str, symbol: str, timeframe: str) -> str:
        """Sorted set of one candle series (score: open time in epoch ms)."""
        return self.key("ohlcv", self._ohlcv_tag(exchange, symbol), _timeframe(timeframe))

    def ohlcv_seq(self, exchange: str, symbol: str, timeframe: str) -> str:
        """Sequence counter of one series' update stream."""
        return self.key("ohlcv", self._ohlcv_tag(exchange, symbol), _timeframe(timeframe), "seq")

    def ohlcv_channel(self, exchange: str, symbol: str, timeframe: str) -> str:
        """Channel each upsert of one series publishes its changed candles on."""
        return self.channel("ohlcv", self._ohlcv_tag(exchange, symbol), _timeframe(timeframe))

    @staticmethod
    def _ohlcv_tag(exchange: str, symbol: str) -> str:
        return validate_exchange(exchange) + ":" + validate_symbol(symbol)

    # --- orders (stores/orders.py) ---------------------------------------------------------

    def order(self, exchange: str, order_id: str) -> str:
        """Hash of one order's status record (a field per order field), tag ``{exchange}``."""
        return self.key("order", validate_exchange(exchange), validate_part(order_id, "order_id"))

    def order_index(self, exchange: str) -> str:
        """ZSET of the order ids of ``exchange`` (score: expiry in server ms, +inf while live)."""
        return self.key("orders", validate_exchange(exchange))

    def order_queue(self) -> str:
        """The order queue (a Stream with consumer groups)."""
        return self.key("orderq", "queue")

    def order_submitted(self, exchange: str, client_order_id: str) -> str:
        """Idempotency marker of a submitted order; same slot as :meth:`order_queue`."""
        return self.key(
            "orderq",
            "queue",
            "cid",
            validate_exchange(exchange),
            validate_part(client_order_id, "client_order_id"),
        )

    # --- trades (stores/trades.py) ---------------------------------------------------------

    def trades(self, exchange: str, symbol: str) -> str:
        """Stream of the public trades of one symbol; tag ``{exchange}`` (one slot per exchange)."""
        return self.key("trades", validate_exchange(exchange), validate_symbol(symbol))

    def trade_symbols(self, exchange: str) -> str:
        """SET of the symbols with a trade stream on ``exchange`` (same slot as the streams)."""
        return self.key("tradesyms", validate_exchange(exchange))

    def trade_exchanges(self) -> str:
        """SET of the exchanges with at least one trade stream."""
        return self.key("tradexs", "index")

    def user_trades(self, account: str) -> str:
        """Stream of the user trades (fills) of ``account``; tag ``{account}``."""
        return self.key("usertrades", validate_part(account, "account"))

    def user_trade_accounts(self) -> str:
        """SET of the accounts with a user-trade stream."""
        return self.key("usertradeaccts", "index")

    # --- accounts (stores/accounts.py) -----------------------------------------------------

    def balances(self, account: str) -> str:
        """Hash of ``account``'s balances: field currency, value an encoded Balance."""
        return self.key("balances", validate_part(account, "account"))

    def positions(self, account: str) -> str:
        """Hash of ``account``'s positions: field symbol, value an encoded Position."""
        return self.key("positions", validate_part(account, "account"))

    def position_accounts(self) -> str:
        """SET of the accounts that have (or had) positions: ``all_positions`` without SCAN."""
        return self.key("posaccts", "index")

    # --- bots (stores/bots.py) -------------------------------------------------------------
    # Every bot key shares the tag {bots}: one slot, so a claim script can keep the claim
    # index, and claims() reads every claim in one round trip (bots hold few claims).

    def bot_claim(self, exchange: str, symbol: str) -> str:
        """The lease of one (exchange, symbol): a hash (token, fence, owner) with a TTL."""
        return self.key(
            "bot", "bots", "claim", validate_exchange(exchange), validate_symbol(symbol)
        )

    def bot_claim_fence(self, exchange: str, symbol: str) -> str:
        """The fence counter of one claim (no TTL)."""
        return self.key(
            "bot", "bots", "fence", validate_exchange(exchange), validate_symbol(symbol)
        )

    def bot_claim_queue(self, exchange: str, symbol: str) -> str:
        """The bots waiting for a claim, by arrival: the release wakes the oldest."""
        return self.key(
            "bot", "bots", "queue", validate_exchange(exchange), validate_symbol(symbol)
        )

    def bot_claim_channel(self, exchange: str, symbol: str) -> str:
        """Prefix of the channels that wake bots waiting for the claim (``<prefix>:<hub>``)."""
        return self.channel("bot", "bots", validate_exchange(exchange), validate_symbol(symbol))

    def bot_claims(self) -> str:
        """The claim index: a sorted set of ``exchange:symbol`` scored by expiry (server ms)."""
        return self.key("bot", "bots", "claims")

    def bot_claim_prefix(self) -> str:
        """What precedes ``exchange:symbol`` in a claim key (the index stores only the tail)."""
        return self.key("bot", "bots", "claim") + ":"

    def bot_opening(self, exchange: str, symbol: str) -> str:
        """An opening-position mark: the bot id as a string with a TTL."""
        return self.key(
            "bot", "bots", "opening", validate_exchange(exchange), validate_symbol(symbol)
        )

    def bot_status(self) -> str:
        """One hash of every bot's status document, by bot id."""
        return self.key("bot", "bots", "status")

    # --- processes (stores/processes.py) ---------------------------------------------------
    # Every process key shares the tag {processes}: one slot, so register/heartbeat/stop are
    # one Lua script each and the liveness indexes (ZSETs scored by server-time heartbeat ms)
    # are updated atomically with the records. Ids are built by the store.

    def process(self, process_id: str) -> str:
        """Hash of one process record (kind, component, status, message, times, host, pid)."""
        return self.key("proc", "processes", "r", validate_part(process_id, "process_id"))

    def process_params(self, process_id: str) -> str:
        """Hash of one process's params: field name -> JSON value (merged field-wise)."""
        return self.key("proc", "processes", "p", validate_part(process_id, "process_id"))

    def process_index(self) -> str:
        """ZSET of every registered, not stopped process id, scored by last heartbeat (ms)."""
        return self.key("proc", "processes", "live")

    def process_kind_index(self, kind: str) -> str:
        """ZSET of the live process ids of ``kind``, scored by last heartbeat (ms)."""
        return self.key("proc", "processes", "k", validate_part(kind, "kind"))

    def process_component_index(self, component: str) -> str:
        """ZSET of the live process ids of ``component``, scored by last heartbeat (ms)."""
        return self.key("proc", "processes", "c", validate_part(component, "component"))

    def process_prefixes(self) -> tuple[str, str, str, str]:
        """Prefixes of record, params, kind-index and component-index keys (for Lua)."""
        base = self.key("proc", "processes")
        return (base + ":r:", base + ":p:", base + ":k:", base + ":c:")

    # --- exchange and symbol metadata (stores/exchanges.py, stores/symbols.py) -------------
    # Read-through entries. Exchanges share the tag {exchanges}; symbols are tagged by their
    # exchange, so an entry, its fill lock, the member index and the list set of one exchange
    # live in one slot (and in the slot of that exchange's tickers).

    def exchange_meta(self, exchange: str) -> str:
        """Cached Exchange record (codec bytes, or the negative marker), with a TTL."""
        return self.key("exmeta", "exchanges", "e", validate_exchange(exchange))

    def exchange_meta_lock(self, exchange: str) -> str:
        """Fill lock of one exchange entry (single-flight across processes)."""
        return self.key("exmeta", "exchanges", "l", validate_exchange(exchange))

    def exchange_meta_index(self) -> str:
        """SET of every exchange with a cached entry or a fill in flight."""
        return self.key("exmeta", "exchanges", "idx")

    def exchange_meta_all(self) -> str:
        """SET of the complete exchange list (plus the member ``""``): exists = list cached."""
        return self.key("exmeta", "exchanges", "all")

    def exchange_meta_all_lock(self) -> str:
        """Fill lock of the exchange list."""
        return self.key("exmeta", "exchanges", "all-lock")

    def exchange_meta_prefixes(self) -> tuple[str, str]:
        """Prefixes of entry and lock keys, for the invalidate-all script."""
        base = self.key("exmeta", "exchanges")
        return (base + ":e:", base + ":l:")

    def symbol_meta(self, exchange: str, symbol: str) -> str:
        """Cached Market record of one symbol (codec bytes, or the negative marker)."""
        return self.key("symmeta", validate_exchange(exchange), "e", validate_symbol(symbol))

    def symbol_meta_lock(self, exchange: str, symbol: str) -> str:
        """Fill lock of one symbol entry (single-flight across processes)."""
        return self.key("symmeta", validate_exchange(exchange), "l", validate_symbol(symbol))

    def symbol_meta_index(self, exchange: str) -> str:
        """SET of every symbol of ``exchange`` with a cached entry or a fill in flight."""
        return self.key("symmeta", validate_exchange(exchange), "idx")

    def symbol_meta_all(self, exchange: str) -> str:
        """SET of the complete symbol list of ``exchange`` (plus ``""``): exists = list cached."""
        return self.key("symmeta", validate_exchange(exchange), "all")

    def symbol_meta_all_lock(self, exchange: str) -> str:
        """Fill lock of the symbol list of ``exchange``."""
        return self.key("symmeta", validate_exchange(exchange), "all-lock")

    def symbol_meta_prefixes(self, exchange: str) -> tuple[str, str]:
        """Prefixes of entry and lock keys of ``exchange``, for the invalidate-all script."""
        base = self.key("symmeta", validate_exchange(exchange))
        return (base + ":e:", base + ":l:")

    # --- coordination: locks (coordination/lock.py) ----------------------------------------
    # The keys of one lock share the tag {<name>}: acquire/renew/release are one-slot scripts.

    def lock(self, name: str) -> str:
        """A lock's lease: a hash (token, fence, owner) with a TTL."""
        return self.key("lock", validate_part(name, "name"))

    def lock_fence(self, name: str) -> str:
        """A lock's fence counter (no TTL: fences never go backwards while it exists)."""
        return self.key("lock", validate_part(name, "name"), "fence")

    def lock_queue(self, name: str) -> str:
        """A lock's waiters (``<hub>:<token>`` by arrival): the release wakes the oldest."""
        return self.key("lock", validate_part(name, "name"), "queue")

    def lock_channel(self, name: str) -> str:
        """Prefix of the wake-up channels: a waiting process listens on ``<prefix>:<hub id>``."""
        return self.channel("lock", validate_part(name, "name"))

    # --- coordination: circuit breakers (coordination/breaker.py) --------------------------

    def breaker(self, name: str) -> str:
        """State hash of breaker ``name`` (state, seq, epoch, open deadline); never expires."""
        return self.key("breaker", validate_part(name, "name"))

    def breaker_window(self, name: str) -> str:
        """Time-bucketed failure/call counters of breaker ``name`` (same slot as its state)."""
        return self.key("breaker", validate_part(name, "name"), "window")

    def breaker_probes(self, name: str) -> str:
        """ZSET of half-open probe permits (member: token, score: lease end, server ms)."""
        return self.key("breaker", validate_part(name, "name"), "probes")

    def breaker_log(self, name: str) -> str:
        """Capped list of the last transition envelopes, for gap backfill."""
        return self.key("breaker", validate_part(name, "name"), "log")

    def breaker_channel(self, name: str) -> str:
        """Channel on which breaker ``name`` publishes its transitions."""
        return self.channel("breaker", validate_part(name, "name"))

    # --- coordination: idempotency (coordination/idempotency.py) ---------------------------

    def idempotency(self, scope: str, key: str) -> str:
        """Record of idempotency ``key`` in ``scope``: one key, its own slot."""
        return self.key("idem", validate_part(scope, "scope") + ":" + validate_part(key, "key"))

    # --- coordination: events (coordination/events.py) -------------------------------------

    def events(self, topic: str) -> str:
        """Backlog stream of an event topic (entry ids ``<seq>-0``): ``<ns>:events:{<topic>}``."""
        return self.key("events", validate_part(topic, "topic"))

    def events_channel(self, topic: str) -> str:
        """Pub/sub channel of an event topic; same slot as :meth:`events`."""
        return self.channel("events", validate_part(topic, "topic"))

    # --- coordination: shared state (coordination/state.py) --------------------------------

    def state(self, name: str) -> str:
        """Hash of a shared state (version and envelope): ``<ns>:state:{<name>}``."""
        return self.key("state", validate_part(name, "name"))

    def state_channel(self, name: str) -> str:
        """Pub/sub channel announcing changes of a shared state; same slot as :meth:`state`."""
        return self.channel("state", validate_part(name, "name"))
