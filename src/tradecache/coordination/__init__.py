"""Coordination primitives built on the core only: locks, breakers, idempotency, events, state.

Use them through the facade (``cache.lock(...)``, ``cache.events`` ...); each
module documents its guarantees.
"""
