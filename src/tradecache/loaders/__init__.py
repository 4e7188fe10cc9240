"""Loaders for the read-through metadata caches (``cache.exchanges``, ``cache.symbols``).

A loader is any plain async callable; this package ships one for SQL
databases, :class:`tradecache.loaders.sql.SqlLoader` (extra ``sql``:
``pip install 'tradecache[sql]'``)::

    from tradecache.loaders.sql import SqlLoader

    sql = SqlLoader("sqlite+aiosqlite:///metadata.db")
    await sql.create_schema()
    sql.attach(cache)
"""
