"""The ``tradecache`` command line: ``server``, ``demo``, ``check``, ``bench``, ``top``.

Needs the ``cli`` extra (typer and rich)::

    pip install 'tradecache[cli]'
    tradecache server --cluster      # an embedded Redis Cluster, prints its URL
"""

from __future__ import annotations

from .app import main

__all__ = ["main"]
