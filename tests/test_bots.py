"""cache.bots: symbol claims (leases), opening marks, status documents; real processes."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from helpers.locking import (
    SPAWN,
    Grant,
    bot_holder,
    bot_racer,
    check_exclusive,
    processes,
    receive,
    receive_from,
)
from tradecache.errors import Claimed, LockLost, ValidationError
from tradecache.models import BotStatus
from tradecache.stores.bots import BotCache, Claim, ClaimInfo
from tradecache.testing import wait_until

# --- claims --------------------------------------------------------------------------------------


async def test_claim_is_exclusive_and_listed(cache):
    bots = cache.bots
    assert await bots.holder("binance", "BTC/USDT") is None
    assert await bots.claims() == []
    async with bots.claim("Binance", "BTC/USDT", "bot-1", ttl=5) as claim:
        assert isinstance(claim, Claim)
        assert (claim.exchange, claim.symbol, claim.bot_id) == ("binance", "BTC/USDT", "bot-1")
        assert claim.held and not claim.lost.is_set() and claim.lost_reason is None
        assert 4.5 < claim.remaining() <= 5
        assert "bot-1" in repr(claim) and "held" in repr(claim)
        assert await bots.holder("binance", "BTC/USDT") == "bot-1"
        with pytest.raises(Claimed) as busy:
            await bots.claim("binance", "BTC/USDT", "bot-2")
        assert busy.value.holder == "bot-1" and busy.value.key == "binance:BTC/USDT"
        (info,) = await bots.claims()
        assert isinstance(info, ClaimInfo)
        assert (info.exchange, info.symbol, info.bot_id, info.fence) == (
            "binance",
            "BTC/USDT",
            "bot-1",
            claim.fence,
        )
        assert 4 < info.ttl <= 5
    assert "not held" in repr(claim)
    assert await bots.holder("binance", "BTC/USDT") is None
    assert await bots.claims() == []


async def test_claims_filter_and_order(cache):
    bots = cache.bots
    held = [
        await bots.claim("kraken", "ETH/USD", "k1"),
        await bots.claim("binance", "SOL/USDT", "b2"),
        await bots.claim("binance", "BTC/USDT:USDT", "b1"),
    ]
    listed = [(c.exchange, c.symbol, c.bot_id) for c in await bots.claims()]
    assert listed == [
        ("binance", "BTC/USDT:USDT", "b1"),
        ("binance", "SOL/USDT", "b2"),
        ("kraken", "ETH/USD", "k1"),
    ]
    assert [c.bot_id for c in await bots.claims("KRAKEN")] == ["k1"]
    for claim in held:
        assert await claim.release()
    assert await bots.claims() == []


async def test_a_waiting_bot_gets_the_claim_on_release(cache):
    bots = cache.bots
    first = await bots.claim("binance", "BTC/USDT", "bot-1", ttl=30)
    waiter = asyncio.create_task(bots.claim("binance", "BTC/USDT", "bot-2", wait=20).__aenter__())
    await wait_until(lambda: cache.locks.hub.waiting == 1, timeout=5)
    started = time.monotonic()
    await first.release()
    second = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - started < 5  # pushed, not the 30 s TTL
    assert second.bot_id == "bot-2" and second.fence > first.fence
    await second.release()


async def test_bounded_wait_raises_claimed(cache):
    bots = cache.bots
    async with bots.claim("binance", "BTC/USDT", "bot-1", ttl=10):
        with pytest.raises(Claimed) as busy:
            async with bots.claim("binance", "BTC/USDT", "bot-2", wait=0.2):
                pass  # pragma: no cover
        assert busy.value.holder == "bot-1"


async def test_fences_increase_per_symbol(cache):
    fences = []
    for bot in ("a", "b", "c", "a"):
        async with cache.bots.claim("binance", "BTC/USDT", bot) as claim:
            fences.append(claim.fence)
    assert fences == sorted(set(fences))


async def test_a_dead_bots_claim_expires_and_leaves_the_index(cache):
    bots = cache.bots
    dead = await bots.claim("binance", "BTC/USDT", "dead-bot", ttl=0.3)
    dead.lease._stop()  # the bot "died": no more renewals, never released
    assert [c.bot_id for c in await bots.claims()] == ["dead-bot"]
    await wait_until(_not(bots.holder, "binance", "BTC/USDT"), timeout=5)
    assert await bots.claims() == []
    assert await cache.client.zcard(cache.keys.bot_claims()) == 0  # pruned
    async with bots.claim("binance", "BTC/USDT", "next-bot", wait=5) as claim:
        assert claim.fence > dead.fence


def _not(fn, *args):
    async def check():
        return not await fn(*args)

    return check


async def test_claims_prunes_an_index_entry_whose_lease_vanished(cache):
    bots = cache.bots
    claim = await bots.claim("binance", "BTC/USDT", "bot-1", ttl=30)
    await cache.client.delete(cache.keys.bot_claim("binance", "BTC/USDT"))  # e.g. evicted
    assert await bots.claims() == []
    assert await cache.client.zcard(cache.keys.bot_claims()) == 0

    async def use(held):
        async with held as same:  # an awaited claim is a context manager too
            assert same is held

    with pytest.raises(LockLost):  # the release found it gone: reported
        await use(claim)
    assert claim.lost.is_set()


async def test_lost_claim_is_reported(cache):
    bots = cache.bots
    claim = await bots.claim("binance", "BTC/USDT", "bot-1", ttl=0.3)
    await cache.client.delete(cache.keys.bot_claim("binance", "BTC/USDT"))
    await asyncio.wait_for(claim.lost.wait(), 5)
    assert "taken over" in (claim.lost_reason or "")
    with pytest.raises(LockLost):
        claim.ensure_held()
    with pytest.raises(LockLost, match="lost while held"):
        await claim.__aexit__(None, None, None)


async def test_claim_fenced_write(cache):
    resource = cache.keys.key("plan", "BTC")
    old = await cache.bots.claim("binance", "BTC/USDT", "bot-1")
    await old.fenced_set(resource, "old")
    await old.release()
    async with cache.bots.claim("binance", "BTC/USDT", "bot-2") as new:
        await new.fenced_set(resource, "new", ttl=60)
    with pytest.raises(LockLost):
        await old.fenced_set(resource, "stale")
    assert (await cache.locks.fenced_get(resource)).value == b"new"


async def test_claim_validation(cache):
    bots = cache.bots
    with pytest.raises(ValidationError, match="exchange"):
        bots.claim("bin ance", "BTC/USDT", "b")
    with pytest.raises(ValidationError, match="symbol"):
        bots.claim("binance", "BTC{USDT}", "b")
    with pytest.raises(ValidationError, match="bot_id"):
        bots.claim("binance", "BTC/USDT", "")
    with pytest.raises(ValidationError, match="ttl"):
        bots.claim("binance", "BTC/USDT", "b", ttl=0)
    with pytest.raises(ValidationError, match="exchange"):
        await bots.claims("bad exchange")
    with pytest.raises(ValidationError, match="exchange"):
        bots.claim(["binance"], "BTC/USDT", "b")  # unhashable: not a remembered pair either
    with pytest.raises(ValidationError, match="symbol"):
        bots.claim("binance", ["BTC/USDT"], "b")


async def test_claim_keys_are_remembered_per_pair_and_bounded(cache, monkeypatch):
    bots = cache.bots
    monkeypatch.setattr("tradecache.stores.bots._MAX_REMEMBERED", 2)
    for _ in range(2):  # the second round reuses what the first validated
        for exchange, symbol in (("Binance", "BTC/USDT"), ("okx", "ETH/USDT"), ("okx", "X/Y")):
            async with bots.claim(exchange, symbol, "bot-1", ttl=5) as claim:
                assert (claim.exchange, claim.symbol) == (exchange.lower(), symbol)
                assert await bots.holder(exchange.lower(), symbol) == "bot-1"
            assert len(bots._specs) <= 2
    assert bots._specs[("okx", "X/Y")][2].key == cache.keys.bot_claim("okx", "X/Y")
    with pytest.raises(ValidationError, match="bot_id"):  # a remembered pair, a bad bot id
        bots.claim("okx", "X/Y", "bad bot")


async def test_a_bot_cache_with_its_own_lock_manager(cache):
    bots = BotCache(cache.context)
    assert "BotCache" in repr(bots)
    async with bots.claim("binance", "BTC/USDT", "solo") as claim:
        assert claim.held
    await bots.aclose()
    await cache.bots.aclose()  # the facade's shares cache.locks: closing it is a no-op
    async with cache.bots.claim("binance", "BTC/USDT", "again"):
        pass


# --- opening marks -------------------------------------------------------------------------------


async def test_opening_marks_are_owner_checked(cache):
    bots = cache.bots
    assert not await bots.is_opening("binance", "BTC/USDT")
    assert await bots.opening_by("binance", "BTC/USDT") is None
    await bots.mark_opening("binance", "BTC/USDT", "bot-1", ttl=30)
    assert await bots.is_opening("binance", "BTC/USDT")
    assert await bots.opening_by("binance", "BTC/USDT") == "bot-1"
    await bots.mark_opening("binance", "BTC/USDT", "bot-1", ttl=60)  # same bot: refreshed
    assert 59 < await cache.client.ttl(cache.keys.bot_opening("binance", "BTC/USDT")) <= 60
    with pytest.raises(Claimed) as busy:
        await bots.mark_opening("binance", "BTC/USDT", "bot-2")
    assert busy.value.holder == "bot-1"
    with pytest.raises(Claimed):
        await bots.unmark_opening("binance", "BTC/USDT", "bot-2")
    assert await bots.opening_by("binance", "BTC/USDT") == "bot-1"  # untouched
    assert await bots.unmark_opening("binance", "BTC/USDT", "bot-1") is True
    assert await bots.unmark_opening("binance", "BTC/USDT", "bot-1") is False
    assert not await bots.is_opening("binance", "BTC/USDT")


async def test_opening_mark_expires(cache):
    bots = cache.bots
    await bots.mark_opening("binance", "ETH/USDT", "bot-1", ttl=0.1)
    await wait_until(_not(bots.is_opening, "binance", "ETH/USDT"), timeout=5)
    await bots.mark_opening("binance", "ETH/USDT", "bot-2")  # a crashed bot's mark is gone


async def test_opening_mark_validation(cache):
    for bad in (0, -1, "5", True, float("nan")):
        with pytest.raises(ValidationError, match="ttl"):
            await cache.bots.mark_opening("binance", "BTC/USDT", "b", ttl=bad)
    with pytest.raises(ValidationError, match="bot_id"):
        await cache.bots.unmark_opening("binance", "BTC/USDT", "a b")


# --- status documents ----------------------------------------------------------------------------


async def test_status_documents(cache):
    bots = cache.bots
    assert await bots.get_status("bot-1") is None
    assert await bots.all_status() == {}
    mapping = {
        "status": "trading",
        "symbol": "BTC/USDT",
        "exchange": "binance",
        "message": "ok",
        "pnl": "12.5",
        "feeds": {"1": {"symbol": "BTC/USDT"}},
        "data": {"grid": 7},
        "updated": 1,  # ignored: the store stamps the time
        "bot_id": "bot-1",
    }
    original = copy.deepcopy(mapping)
    before = datetime.now(UTC) - timedelta(seconds=1)
    stored = await bots.set_status("bot-1", mapping)
    assert mapping == original  # never mutated
    assert isinstance(stored, BotStatus)
    assert stored.updated is not None and before <= stored.updated <= datetime.now(UTC)
    assert stored.data == {"grid": 7, "pnl": "12.5", "feeds": {"1": {"symbol": "BTC/USDT"}}}
    assert await bots.get_status("bot-1") == stored
    await bots.set_status("bot-2", BotStatus(bot_id="bot-2", status="idle"))
    everything = await bots.all_status()
    assert set(everything) == {"bot-1", "bot-2"} and everything["bot-2"].status == "idle"
    assert await bots.delete_status("bot-1") is True
    assert await bots.delete_status("bot-1") is False
    assert set(await bots.all_status()) == {"bot-2"}


async def test_bad_status_writes_nothing(cache):
    bots = cache.bots
    with pytest.raises(ValidationError, match="bot_id"):
        await bots.set_status("bot-1", {"botId": "bot-2"})
    with pytest.raises(ValidationError, match="mapping"):
        await bots.set_status("bot-1", ["status", "x"])
    with pytest.raises(ValidationError):
        await bots.set_status("bot-1", {"status": 5})
    with pytest.raises(ValidationError):
        await bots.set_status("bot-1", {"blob": object()})
    with pytest.raises(ValidationError, match="bot_id"):
        await bots.set_status("", {})
    assert await bots.all_status() == {}
    await bots.set_status("bot-1", {"balance": Decimal("1.5")})
    assert (await bots.get_status("bot-1")).data == {"balance": "1.5"}  # free-form data is JSON


# --- real processes ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_ten_processes_race_for_one_symbol(cache):
    bots_n, rounds = 10, 15
    start, go, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    args = [
        (cache.settings.url, cache.keys.namespace, f"bot-{i}", rounds, start, go, results)
        for i in range(bots_n)
    ]
    with processes(bot_racer, args) as procs:
        start.set()
        first = await asyncio.to_thread(receive, results, bots_n, 120, procs)
        winners = [bot for kind, bot, _ in first if kind == "won"]
        assert len(winners) == 1  # exactly one bot got it; the winner still holds it
        assert {holder for kind, _, holder in first if kind == "lost"} == set(winners)
        go.set()
        rest = await asyncio.to_thread(receive, results, bots_n * rounds + 1 + bots_n, 120, procs)
    grants = [item for kind, item in ((m[0], m[1]) for m in rest) if kind == "grant"]
    assert len(grants) == bots_n * rounds + 1
    assert all(isinstance(g, Grant) for g in grants)
    check_exclusive(grants)  # one holder at any moment; fences increase in grant order
    assert await cache.bots.claims() == []


@pytest.mark.slow
async def test_killed_holder_is_replaced_within_ttl(cache):
    bots_n, ttl = 10, 1.0
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(bots_n)]
    where = (cache.settings.url, cache.keys.namespace)
    args = [(*where, f"bot-{i}", ttl, pipes[i][1]) for i in range(bots_n)]
    readers = [reader for reader, _ in pipes]
    with processes(bot_holder, args):
        bot, pid, fence, _ = await asyncio.to_thread(receive_from, readers, 120)
        fences = [fence]
        for _ in range(3):  # kill three holders in a row
            assert await cache.bots.holder("binance", "ETH/USDT") == bot
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            successor, pid, fence, acquired = await asyncio.to_thread(receive_from, readers, 60)
            assert successor != bot
            assert acquired - killed <= ttl + 1.0  # the dead bot's claim expired, pushed on
            fences.append(fence)
            bot = successor
    assert fences == sorted(set(fences))
