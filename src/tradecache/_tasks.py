"""Stopping background tasks for sure.

On Python 3.11, ``asyncio.wait_for`` returns the inner result and drops a
cancellation that arrives in the loop iteration in which the inner call
completes (fixed in 3.12). redis-py wraps every socket write in it, so a
background loop that sends commands can outlive one ``task.cancel()`` and a
``close()`` that awaits it then waits forever. :func:`cancel_and_wait`
repeats the cancellation until the task has ended, as anyio's level
cancellation does.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

REDELIVER: Final = 0.1  # seconds before a cancellation a task survived is sent again


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, redeliver: float = REDELIVER) -> None:
    """Cancel ``tasks`` (``None`` entries are ignored) and return once each has ended.

    A task's own exception is not raised here; the task keeps it. Cancelling
    the caller stops the waiting, not the cancelling.

    Example::

        await cancel_and_wait(self._reader, self._prober)
    """
    pending = {task for task in tasks if task is not None and not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=redeliver)
