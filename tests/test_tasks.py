"""cancel_and_wait: a cancellation a task survives is sent again."""

from __future__ import annotations

import asyncio

import pytest

from tradecache._tasks import cancel_and_wait


async def test_a_task_that_drops_a_cancellation_is_cancelled_again() -> None:
    started, dropped = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            dropped.set()  # what Python 3.11's wait_for does in a race
        await asyncio.Event().wait()  # only a second cancellation ends this

    task = asyncio.create_task(stubborn())
    await started.wait()
    await cancel_and_wait(task, None, redeliver=0.01)
    assert dropped.is_set()
    assert task.cancelled()


async def test_ended_tasks_are_left_alone_and_keep_their_exception() -> None:
    async def fails() -> None:
        raise LookupError("kept")

    failed = asyncio.create_task(fails())
    with pytest.raises(LookupError):
        await failed
    await cancel_and_wait(failed)
    assert isinstance(failed.exception(), LookupError)

    waiting = asyncio.Event()

    async def ends_on_cancel() -> None:
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    running = asyncio.create_task(ends_on_cancel())
    await waiting.wait()
    await cancel_and_wait(running)
    assert isinstance(running.exception(), RuntimeError)
