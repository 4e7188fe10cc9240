"""``tradecache demo``: a simulated trading system on one Redis, with a live dashboard.

Real OS processes share one Redis (an embedded one by default): a ticker feed,
bots that claim markets and submit orders, order executors, and a monitor
that watches heartbeats and consumes the trades. The run ends (duration or
Ctrl-C) with checked invariants: orders executed exactly once, trades pushed
= consumed, positions equal to their fills, no market held by two bots at
once. ::

    $ tradecache demo                          # dashboard until Ctrl-C
    $ tradecache demo --duration 20 --no-ui --json
    $ tradecache demo --chaos --cluster

    from tradecache.demo import DemoOptions, run_demo
    exit_code = run_demo(DemoOptions(duration=20, ui=False))

Modules: ``common`` (configuration, ids, fill arithmetic), ``child`` (the child
entry point), ``feed``, ``bot``, ``executor``, ``monitor`` (the roles),
``supervisor`` (spawn, chaos, stop), ``observe`` (the parent's view),
``dashboard`` (rendering), ``summary`` (the checks), ``runner`` (the command).
The package needs the ``cli`` extra (rich).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]


def __getattr__(name: str) -> Any:
    # Lazy: the child processes import this package and need neither rich nor the runner.
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
