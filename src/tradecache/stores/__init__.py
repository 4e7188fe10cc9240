"""The stores: one class per kind of cached state, each built from a Context.

Use them through the facade (``cache.tickers``, ``cache.ohlcv`` ...); building
one by hand takes a :class:`~tradecache.context.Context`::

    from tradecache.stores.tickers import TickCache

    tickers = TickCache(cache.context)
"""
