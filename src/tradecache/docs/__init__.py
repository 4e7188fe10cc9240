"""tradecache's documentation, importable: text guides as string constants.

::

    from tradecache.docs import quickstart
    print(quickstart)

    from tradecache import docs
    for name, text in docs.get_all_docs().items():
        print(name, len(text))

The guides (Markdown with Python code blocks): :data:`quickstart`,
:data:`caching_guide`, :data:`coordination_guide`, :data:`testing_guide`,
:data:`operations_guide`, :data:`migration_guide` (from fullon_cache, call by
call) and ``api_reference``, which is generated from the docstrings of the
code on first access (:func:`tradecache.docs.api.build_api_reference`), so it
always matches the installed version.
"""

from __future__ import annotations

from .api import build_api_reference
from .guides import caching_guide, coordination_guide, operations_guide, quickstart, testing_guide
from .migration import migration_guide

__all__ = [
    "DOC_NAMES",
    "api_reference",
    "caching_guide",
    "coordination_guide",
    "get_all_docs",
    "migration_guide",
    "operations_guide",
    "quickstart",
    "testing_guide",
]

#: The names of every guide, in reading order.
DOC_NAMES = (
    "quickstart",
    "caching_guide",
    "coordination_guide",
    "testing_guide",
    "operations_guide",
    "migration_guide",
    "api_reference",
)

api_reference: str  # generated on first access, see __getattr__


def __getattr__(name: str) -> str:
    # PEP 562: ``api_reference`` is built from the docstrings when first asked for.
    if name == "api_reference":
        return build_api_reference()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_all_docs() -> dict[str, str]:
    """Every guide by name (:data:`DOC_NAMES` order), the API reference included.

    Example::

        >>> from tradecache.docs import get_all_docs
        >>> list(get_all_docs())[:2]
        ['quickstart', 'caching_guide']
    """
    texts = {
        "quickstart": quickstart,
        "caching_guide": caching_guide,
        "coordination_guide": coordination_guide,
        "testing_guide": testing_guide,
        "operations_guide": operations_guide,
        "migration_guide": migration_guide,
        "api_reference": build_api_reference(),
    }
    return {name: texts[name] for name in DOC_NAMES}
