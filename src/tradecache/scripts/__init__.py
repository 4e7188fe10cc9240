"""Lua scripts: one file per atomic operation in this folder, loaded once.

A :class:`Script` is read from ``scripts/<name>.lua`` when first used and
runs with ``EVALSHA``; when the server does not know it (a restart, a
failover, ``SCRIPT FLUSH``) it falls back to ``EVAL``, which also caches it,
so a script never runs twice and never fails for being unknown::

    from tradecache.scripts import Script

    RENEW = Script("lock_renew")
    ok = await RENEW(client, keys=[key], args=[token, ttl_ms])

For pipelines, :class:`ScriptBatch` queues ``EVALSHA`` calls next to plain
commands and re-runs only the calls that came back ``NOSCRIPT``: those did not
run, so re-running them cannot apply anything twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from ..errors import redis_errors

__all__ = ["Script", "ScriptBatch"]

Arg = str | bytes | int | float


class Script:
    """A Lua script of this package, addressed by file name (without ``.lua``).

    ``source`` may be given instead, for scripts that do not live in a file
    (tests, user extensions). ``include`` prepends helpers from
    ``scripts/lib/`` (e.g. ``include=("envelope",)`` defines ``tc_envelope``).
    """

    __slots__ = ("name", "sha", "source")

    def __init__(
        self, name: str, source: str | None = None, *, include: Sequence[str] = ()
    ) -> None:
        self.name = name
        folder = resources.files(__package__)
        if source is None:
            source = folder.joinpath(f"{name}.lua").read_text("utf-8")
        # Shared Lua helpers (scripts/lib/<name>.lua) are prepended: scripts run
        # in isolation on the server, so there is no other way to share code.
        libs = [folder.joinpath("lib", f"{lib}.lua").read_text("utf-8") for lib in include]
        self.source = "\n".join([*libs, source])
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r})"

    @redis_errors
    async def __call__(
        self, client: Any, keys: Sequence[str] = (), args: Sequence[Arg] = ()
    ) -> Any:
        """Run the script in one round trip (two after a server lost its script cache)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> None:
        """Queue an ``EVALSHA`` of this script on a redis-py pipeline."""
        # execute_command: redis-py's ClusterPipeline blocks its evalsha() method but
        # routes a raw EVALSHA by its keys like any other command.
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


class ScriptBatch:
    """A non-transactional pipeline that may mix scripts and plain commands.

    Example::

        batch = ScriptBatch(client)
        for ticker in tickers:
            batch.call(SET_TICKER, keys=[...], args=[...])
        batch.pipe.sadd(index_key, exchange)
        results = await batch.execute()
    """

    __slots__ = ("_calls", "_client", "pipe")

    def __init__(self, client: Any) -> None:
        self._client = client
        self.pipe = client.pipeline(transaction=False)
        self._calls: dict[int, tuple[Script, Sequence[str], Sequence[Arg]]] = {}

    def __len__(self) -> int:
        return len(self.pipe)

    def call(self, script: Script, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> None:
        """Queue ``script`` with ``keys`` and ``args``."""
        self._calls[len(self.pipe)] = (script, keys, args)
        script.queue(self.pipe, keys, args)

    @redis_errors
    async def execute(self) -> list[Any]:
        """Send everything in one round trip; return the replies in order.

        An error reply other than ``NOSCRIPT`` is raised (translated), after
        the whole batch ran.
        """
        results: list[Any] = await self.pipe.execute(raise_on_error=False)
        missing = [i for i in self._calls if isinstance(results[i], NoScriptError)]
        if missing:
            # A server that lost its script cache (restart, failover, SCRIPT FLUSH):
            # send the sources of just those calls, again in one round trip.
            rerun = self._client.pipeline(transaction=False)
            for index in missing:
                script, keys, args = self._calls[index]
                rerun.execute_command("EVAL", script.source, len(keys), *keys, *args)
            for index, result in zip(
                missing, await rerun.execute(raise_on_error=False), strict=True
            ):
                results[index] = result
        errors = [result for result in results if isinstance(result, Exception)]
        if errors:
            raise errors[0]
        return results
