import pytest

from tradecache.connection import create_client
from tradecache.errors import CommandError, ConnectionLost
from tradecache.scripts import Script, ScriptBatch

INCR_BY = Script("test_incr_by", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
FAIL = Script("test_fail", "return redis.error_reply('nope')")


async def flush_scripts(cache):
    if cache.is_cluster:
        for node in cache.client.get_primaries():
            await cache.client.execute_command("SCRIPT", "FLUSH", target_nodes=node)
    else:
        await cache.client.script_flush()


def test_packaged_scripts_load_by_name(tmp_path):
    with pytest.raises(FileNotFoundError):
        Script("no_such_script")
    assert repr(INCR_BY) == "Script('test_incr_by')"
    assert len(INCR_BY.sha) == 40


async def test_script_survives_a_flushed_script_cache(cache):
    key = cache.keys.key("t", "n")
    assert await INCR_BY(cache.client, [key], [2]) == 2
    await flush_scripts(cache)  # what a restart or failover does
    assert await INCR_BY(cache.client, [key], [3]) == 5  # EVAL fallback, ran once
    assert await INCR_BY(cache.client, [key], [1]) == 6  # and cached again


async def test_script_error_reply_is_translated(cache):
    with pytest.raises(CommandError, match="nope"):
        await FAIL(cache.client)


async def test_batch_reruns_only_noscript_calls(cache):
    key = cache.keys.key("t", "b")
    await flush_scripts(cache)
    batch = ScriptBatch(cache.client)
    batch.call(INCR_BY, [key], [1])
    batch.pipe.incrby(key, 10)
    batch.call(INCR_BY, [key], [100])
    assert len(batch) == 3
    results = await batch.execute()
    assert results == [11, 10, 111]  # NOSCRIPT calls re-ran after the plain command
    assert int(await cache.client.get(key)) == 111  # each script ran exactly once

    cached = ScriptBatch(cache.client)  # the script is loaded now: one round trip, no rerun
    cached.call(INCR_BY, [key], [1])
    assert await cached.execute() == [112]


async def test_batch_raises_error_replies_after_running(cache):
    key = cache.keys.key("t", "c")
    batch = ScriptBatch(cache.client)
    batch.call(FAIL)
    batch.pipe.set(key, "1")
    with pytest.raises(CommandError, match="nope"):
        await batch.execute()
    assert await cache.client.get(key) == b"1"


async def test_script_on_dead_client_is_connection_lost():
    dead = create_client("redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionLost):
        await INCR_BY(dead, ["k"], [1])
    await dead.aclose()
