"""Entry point of every demo child process: ``python -m tradecache.demo.child ROLE NAME CONFIG``.

The harness connects, registers the process (``cache.processes``), heartbeats
with the role's ``report()`` as params, runs the role until SIGTERM, then stops
the registration and exits 0. An unexpected error is heartbeated as
``status="error"``, published on the demo topic and exits 1::

    python -m tradecache.demo.child bot bot1 '{"url": "unix:///...", "namespace": "demo"}'

Children run in their own session (a Ctrl-C in the terminal reaches the
parent only, which stops them in order) and die with the parent
(``PR_SET_PDEATHSIG``, set by the parent when it spawns them).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import TradecacheError
from .common import TOPIC, DemoConfig, connect

__all__ = ["ROLES", "Role", "main", "run_role"]


class Role(Protocol):
    """What a child process runs: ``run`` until ``stop`` is set, and ``report`` its counters."""

    async def run(self, stop: asyncio.Event) -> None: ...  # pragma: no cover - protocol

    def report(self) -> dict[str, Any]: ...  # pragma: no cover - protocol


ROLES = ("feed", "bot", "executor", "monitor")


def _make(role: str, name: str, cache: Any, config: DemoConfig) -> Role:
    if role == "feed":
        from .feed import Feed

        return Feed(cache, config)
    if role == "bot":
        from .bot import Bot

        return Bot(cache, config, name)
    if role == "executor":
        from .executor import Executor

        return Executor(cache, config, name)
    from .monitor import Monitor

    return Monitor(cache, config)


async def _heartbeats(
    cache: Any, process_id: str, role: Role, period: float, done: asyncio.Event
) -> None:
    # Ended by ``done``, never cancelled: redis-py can swallow a cancellation that lands
    # while a command's socket timeout also expired (after a SIGSTOP longer than it), and
    # the task would then heartbeat forever (redis-py issues #2028, #2551).
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), period)
            return
        with contextlib.suppress(TradecacheError):  # a slow or lost round trip: next time
            await cache.processes.heartbeat(process_id, status="running", params=role.report())


def _dump_tasks() -> None:
    """Print where every task waits (SIGUSR2: the parent asks before killing a stuck child)."""
    for task in asyncio.all_tasks():
        print(f"task {task!r}", file=sys.stderr)
        awaited: Any = task.get_coro()
        while awaited is not None:  # the whole await chain, not just the outer frame
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is not None:
                print(f"  {frame.f_code.co_filename}:{frame.f_lineno}", file=sys.stderr)
            else:
                print(f"  awaiting {awaited!r}", file=sys.stderr)
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    sys.stderr.flush()


async def run_role(role_name: str, name: str, config: DemoConfig) -> int:
    """Run one role until SIGTERM; return the exit code (0, or 1 after an error).

    Example: ``asyncio.run(run_role("feed", "feed", config))``
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
    async with connect(config) as cache:
        role = _make(role_name, name, cache, config)
        info = await cache.processes.register(role_name, name, role.report(), status="running")
        done = asyncio.Event()
        beats = asyncio.create_task(_heartbeats(cache, info.id, role, config.heartbeat, done))
        failure: Exception | None = None
        try:
            await role.run(stop)
        except Exception as exc:
            failure = exc
            traceback.print_exc()
        finally:
            done.set()  # first: a heartbeat in flight must not land after the last one
            await asyncio.wait({beats}, timeout=2 * config.socket_timeout)
        with contextlib.suppress(TradecacheError):
            if failure is None:
                await cache.processes.heartbeat(info.id, params=role.report())
                await cache.processes.stop(info.id, message="stopped by the demo")
            else:
                message = f"{type(failure).__name__}: {failure}"
                await cache.processes.heartbeat(info.id, status="error", message=message)
                await cache.events.publish(
                    TOPIC, {"kind": "error", "process": name, "message": message}
                )
        return 0 if failure is None else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``ROLE NAME CONFIG_JSON`` and run the role; returns the exit code.

    Example: ``sys.exit(main(["feed", "feed", config.encode()]))``
    """
    role, name, config = sys.argv[1:] if argv is None else argv
    if role not in ROLES:
        raise SystemExit(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    # The parent stops children with SIGTERM; a stray SIGINT must not kill one half-way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGUSR1 dumps every thread's stack to the log (SIGUSR2 every task's): the parent asks
    # before it kills a child that did not stop, so the kept log says where it hung.
    faulthandler.register(signal.SIGUSR1)
    return asyncio.run(run_role(role, name, DemoConfig.decode(config)))


if __name__ == "__main__":
    sys.exit(main())
