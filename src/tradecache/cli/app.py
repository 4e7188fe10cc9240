"""Entry point of the ``tradecache`` console script.

typer and rich are the optional ``cli`` extra, so they are imported only when
the command runs; without them the command says what to install instead of
printing a traceback::

    $ tradecache server
    tradecache: the command line needs typer and rich: pip install 'tradecache[cli]'
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

_CLI_DEPENDENCIES = frozenset({"typer", "rich", "click"})


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); exits the process.

    Example: ``main(["server", "--cluster"])``
    """
    try:
        from .commands import app
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _CLI_DEPENDENCIES:
            raise
        sys.stderr.write(
            "tradecache: the command line needs typer and rich: pip install 'tradecache[cli]'\n"
        )
        raise SystemExit(2) from None
    app(args=None if argv is None else list(argv), prog_name="tradecache")
