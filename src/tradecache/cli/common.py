"""Helpers shared by the ``tradecache`` commands: consoles, logging, an embedded server.

Logging: the library only logs to ``logging.getLogger("tradecache.*")`` (and
adds a ``NullHandler``); the *command line* is an application, so it installs
a rich handler on the ``tradecache`` logger for the duration of a command::

    undo = configure_logging("info")      # tradecache --log-level info check
    ...
    undo()                                # handler removed, level restored

Structured ``extra`` fields of a record are shown after its message as
``key=value`` pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Final

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from ..server import RedisServer, RedisServerError, find_redis_server, reap_stale

__all__ = ["LogLevel", "configure_logging", "embedded_server", "make_console"]

# Attributes every LogRecord has: anything else came in through ``extra=``.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class LogLevel(StrEnum):
    """The ``--log-level`` choices."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def make_console(stderr: bool = False) -> Console:
    """A console for command output; ``soft_wrap`` keeps URLs on one line.

    Example: ``make_console(stderr=True).print("[red]failed[/]")``
    """
    return Console(stderr=stderr, soft_wrap=True, highlight=False)


class ExtraFormatter(logging.Formatter):
    """Appends a record's structured ``extra`` fields as ``key=value``.

    Example::

        log.warning("lock lost", extra={"lock": "rebalance", "fence": 12})
        # -> lock lost lock='rebalance' fence=12
    """

    def format(self, record: logging.LogRecord) -> str:
        """The message, then the extra fields in the order they were given.

        Example: ``handler.setFormatter(ExtraFormatter("%(name)s: %(message)s"))``
        """
        text = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if not extra:
            return text
        return text + " " + " ".join(f"{key}={value!r}" for key, value in extra.items())


def configure_logging(level: str, console: Console | None = None) -> Callable[[], None]:
    """Send ``tradecache.*`` records at ``level`` or above to a rich handler on stderr.

    Returns a function that removes the handler and restores the level (the
    library itself never configures logging; only the command line does).

    Example::

        undo = configure_logging("debug")
        try: ...
        finally: undo()
    """
    logger = logging.getLogger("tradecache")
    handler = RichHandler(
        console=console or make_console(stderr=True),
        show_path=False,
        markup=False,
        rich_tracebacks=False,
    )
    handler.setFormatter(ExtraFormatter("%(name)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level.upper())

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    return undo


@contextmanager
def embedded_server(command: str, *, tcp: bool = False) -> Iterator[str]:
    """Start a private, ephemeral ``redis-server`` and yield its URL.

    The server listens on a unix socket, or with ``tcp=True`` on a free TCP
    port of 127.0.0.1 (what benchmarks measure).

    Without a binary it prints why (and what to install) and exits with code 2.

    Example::

        with embedded_server("check") as url:
            report = selfcheck.run_sync(url)
    """
    reap_stale()
    try:
        binary = find_redis_server()
    except RedisServerError as exc:
        make_console(stderr=True).print(f"[red]tradecache {command}:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    with RedisServer(binary, port=0 if tcp else None) as server:
        yield server.url
