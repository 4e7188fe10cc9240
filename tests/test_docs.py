"""Self-documentation: the guides, the generated API reference, and the docstring audit.

* every guide is a non-empty string, in ``get_all_docs()``;
* ``api_reference`` documents every public class reachable from ``Cache`` and
  every public method and property of each;
* every public method of the stores and primitives has a docstring with an
  example (the audit);
* every Python code block of the guides, and every call of the migration
  table, is checked against the real API: the names it imports, the
  attributes it reaches from ``cache`` (and from what those return), and the
  arguments of every call, bound to the real signatures;
* the quickstart program and ``help(tradecache)``'s example run for real.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import doctest
import enum
import importlib
import inspect
import pydoc
import re
import textwrap
import typing
from collections.abc import AsyncIterator, Iterator
from functools import cached_property
from types import UnionType
from typing import Any

import pytest

import tradecache
import tradecache.docs
from tradecache import Cache
from tradecache.docs import DOC_NAMES, get_all_docs
from tradecache.docs import api as docs_api
from tradecache.docs.api import SURFACE, build_api_reference, public_members, signature
from tradecache.docs.migration import MAPPING
from tradecache.examples import EXAMPLES
from tradecache.stores.bots import Claim

GUIDES = DOC_NAMES

# --- the guides ------------------------------------------------------------------------------


def test_every_guide_is_a_non_empty_string_in_get_all_docs() -> None:
    docs = get_all_docs()
    assert list(docs) == list(GUIDES)
    for name in GUIDES:
        text = getattr(tradecache.docs, name)
        assert isinstance(text, str)
        assert len(text) > 2000, name
        assert docs[name] == text
        assert text.startswith("# "), name
    assert set(tradecache.docs.__all__) >= set(GUIDES) | {"get_all_docs"}


def test_api_reference_is_importable_and_generated_once() -> None:
    from tradecache.docs import api_reference

    assert api_reference is build_api_reference()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tradecache.docs.nope  # noqa: B018


def test_quickstart_points_to_every_guide_and_example() -> None:
    for name in GUIDES[1:]:
        assert f"tradecache.docs.{name}" in tradecache.docs.quickstart
    for name in EXAMPLES:
        assert f"`{name}`" in tradecache.docs.quickstart


def test_operations_guide_lists_every_setting() -> None:
    for name in tradecache.Settings.model_fields:
        assert f"`{name}: " in tradecache.docs.operations_guide, name
        assert f"TRADECACHE_{name.upper()}" in tradecache.docs.operations_guide


def test_doctests_of_the_docs_package() -> None:
    for module in (docs_api, tradecache.docs):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0
        assert result.attempted > 0


# --- what is reachable from Cache ------------------------------------------------------------


def _function(raw: Any) -> Any:
    if isinstance(raw, staticmethod | classmethod):
        return raw.__func__
    if isinstance(raw, property):
        return raw.fget
    if isinstance(raw, cached_property):
        return raw.func
    return raw


def _returned_classes(fn: Any) -> Iterator[type]:
    """tradecache classes named in the return annotation of ``fn`` (a string or a type)."""
    annotation = getattr(fn, "__annotations__", {}).get("return")
    if annotation is None:
        return
    text = annotation if isinstance(annotation, str) else repr(annotation)
    module = importlib.import_module(fn.__module__)
    for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text):
        value = getattr(module, name, None)
        if inspect.isclass(value) and value.__module__.startswith("tradecache"):
            yield value


def reachable_classes() -> set[type]:
    """Every tradecache class a user can reach from ``Cache``.

    Follows the return annotations of public methods and properties, and of
    ``__aenter__`` / ``__await__`` / ``__anext__`` (so ``cache.bots.claim()``
    leads to ``Claim`` and ``cache.lock()`` to ``Lease``).
    """
    seen: set[type] = set()
    queue: list[type] = [Cache]
    while queue:
        cls = queue.pop()
        if cls in seen or issubclass(cls, enum.Enum | BaseException):
            continue
        seen.add(cls)
        functions = [_function(raw) for _, raw in public_members(cls)]
        functions += [
            getattr(cls, dunder)
            for dunder in ("__aenter__", "__await__", "__anext__")
            if hasattr(cls, dunder)
        ]
        for fn in functions:
            queue.extend(_returned_classes(fn))
    return seen


def audited_classes() -> list[type]:
    """The public classes of the stores and primitives (and the facade)."""
    ours = [
        cls
        for cls in reachable_classes()
        if not cls.__name__.startswith("_")
        and cls.__module__.startswith(("tradecache.stores", "tradecache.coordination"))
    ]
    return [*sorted(ours, key=lambda cls: cls.__qualname__), Cache]


def test_the_walk_reaches_every_store_and_primitive() -> None:
    names = {cls.__name__ for cls in reachable_classes()}
    expected = {
        "TickCache", "OHLCVCache", "OrdersCache", "TradesCache", "AccountCache", "BotCache",
        "ProcessCache", "ExchangeCache", "SymbolCache", "EventBus", "Subscription", "Event",
        "SharedState", "StateWatch", "Lock", "Lease", "LockManager", "CircuitBreaker",
        "Breakers", "Idempotency", "Delivery", "Claim", "Ticker", "Order",
    }  # fmt: skip
    assert expected <= names, expected - names


def test_api_reference_documents_every_reachable_class() -> None:
    documented = {cls for _, cls in SURFACE}
    missing = [
        cls.__qualname__
        for cls in reachable_classes()
        if not cls.__name__.startswith("_")
        and cls.__module__ != "tradecache.context"  # the plumbing stores are built with
        and cls not in documented
    ]
    assert missing == [], f"add to tradecache.docs.api.SURFACE: {missing}"


def test_api_reference_documents_every_public_method_and_property() -> None:
    reference = build_api_reference()
    for _, cls in SURFACE:
        assert f"## {cls.__name__}  ({cls.__module__})" in reference
        for name, raw in public_members(cls):
            if isinstance(raw, property | cached_property):
                assert f"### {cls.__name__}.{name}  (property)" in reference
            else:
                assert f"### {cls.__name__}.{name}{signature(raw)}  (" in reference
    for error in ("ConnectionLost", "ValidationError", "Claimed", "UpdateConflict"):
        assert f"### {error}(" in reference


def test_api_reference_shows_signatures_as_declared() -> None:
    reference = build_api_reference()
    expected = [
        "### TickCache.get(exchange: str, symbol: str, max_age: float | timedelta | None = None)"
        " -> Ticker | None  (async method)",
        "### OrdersCache.update(exchange: str, order_id: str, /, **changes: Any) -> Order",
        "### EventBus.publish(topic: str, payload: Any, *, type: str = 'event',",
        "### TickCache.watch(exchange: str, symbols: Iterable[str] | None = None, *,"
        " initial: bool = False) -> AsyncIterator[Ticker]  (method returning an async iterator)",
        "### ProcessCache.topic(kind: str) -> str  (staticmethod)",
        "### Cache.connect(url: str | Settings | None = None, *, namespace",
        "### Ticker.from_ccxt(data: Any, /, **extra: Any) -> Self  (classmethod)",
        "* `CLOSED = 'closed'`",  # BreakerState members
        "* `first_seq: int`",  # Gap fields (a dataclass)
        "* `healthy: bool`",  # SystemHealth fields (annotations)
        "* `stale_after: float = 30.0` (TRADECACHE_STALE_AFTER): a ticker older than this",
        "(TRADECACHE_URL or REDIS_URL)",
    ]
    for line in expected:
        assert line in reference, line


def test_signature_formats_every_parameter_kind() -> None:
    class Sample:
        def method(self, a: int, /, b: str = "x", *args: Any, c: bool, **kw: Any) -> None:
            """Example: none."""

        def bare(self, a, b=1):  # type: ignore[no-untyped-def]
            """Example: none."""

        @staticmethod
        def static(self_like: int) -> int:
            return self_like

    assert signature(vars(Sample)["method"]) == (
        "(a: int, /, b: str = 'x', *args: Any, c: bool, **kw: Any) -> None"
    )
    assert signature(vars(Sample)["bare"]) == "(a, b = 1)"
    assert signature(vars(Sample)["static"]) == "(self_like: int) -> int"


# --- the audit: every public method has a docstring with an example --------------------------

# Public methods that lack an example, in files other engineers were still changing
# when this test was written (reported to the lead). Remove an entry once fixed.
KNOWN_WITHOUT_EXAMPLE = {
    "BotCache.aclose",
    "Claim.remaining",
    "LockManager.aclose",
    "LockManager.dequeue",
    "LockManager.link",
    "LockManager.release",
    "LockManager.renew",
    "LockManager.spawn",
}


def _has_example(doc: str | None) -> bool:
    return bool(doc) and ("Example" in doc or ">>>" in doc or "::" in doc)  # type: ignore[operator]


def methods_without_example() -> set[str]:
    offenders = set()
    for cls in audited_classes():
        for name, raw in public_members(cls):
            if isinstance(raw, property | cached_property):
                continue  # attributes, documented by their one-line docstring
            if not _has_example(inspect.getdoc(_function(raw))):
                offenders.add(f"{cls.__name__}.{name}")
    return offenders


def test_every_public_method_has_a_docstring_with_an_example() -> None:
    assert len(audited_classes()) >= 20
    offenders = methods_without_example() - KNOWN_WITHOUT_EXAMPLE
    assert offenders == set(), f"add a docstring with an example to: {sorted(offenders)}"


def test_the_audit_finds_a_method_without_example(monkeypatch: pytest.MonkeyPatch) -> None:
    from tradecache.stores.tickers import TickCache

    async def undocumented(self: Any) -> None:
        pass

    monkeypatch.setattr(TickCache, "undocumented", undocumented, raising=False)
    assert "TickCache.undocumented" in methods_without_example()
    assert not _has_example(None)
    assert _has_example("Example: ``x()``") and _has_example(">>> 1") and _has_example("a::")


# --- code blocks are true to the API ---------------------------------------------------------

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Instance:
    cls: type


@dataclasses.dataclass(frozen=True)
class Klass:
    cls: type


@dataclasses.dataclass(frozen=True)
class Method:
    owner: type
    name: str
    raw: Any


@dataclasses.dataclass(frozen=True)
class Items:
    """An iterable (list, AsyncIterator ...) of ``item``."""

    item: Any


def _resolve(annotation: Any, fn: Any, owner: type) -> Any:
    """A type description of an annotation (a string under ``from __future__``)."""
    if isinstance(annotation, str):
        if annotation == "Self":
            return Instance(owner)
        namespace = dict(vars(typing))
        namespace.update(vars(importlib.import_module(fn.__module__)))
        namespace.update(vars(builtins))
        try:
            annotation = eval(annotation, namespace)  # annotations of our own code
        except Exception:
            return None
    if annotation is typing.Self:
        return Instance(owner)
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, UnionType):
        return _resolve(args[0], fn, owner) if len(args) == 1 else None
    if origin is not None and inspect.isclass(origin):
        if origin.__module__.startswith("tradecache"):
            return Instance(origin)
        if origin in (list, tuple, AsyncIterator, Iterator) or origin.__name__ in (
            "AsyncIterator",
            "Iterable",
            "Generator",
        ):
            return Items(_resolve(args[-1], fn, owner)) if args else None
        return None
    if inspect.isclass(annotation):
        return Instance(annotation)
    return None


def _returns(raw: Any, owner: type) -> Any:
    fn = _function(raw)
    return _resolve(getattr(fn, "__annotations__", {}).get("return"), fn, owner)


def _dunder(kind: Any, name: str) -> Any:
    """What ``await x`` (``__await__``), ``async with x`` (``__aenter__``) ... give."""
    if not isinstance(kind, Instance):
        return kind
    raw = inspect.getattr_static(kind.cls, name, None)
    if raw is None or not getattr(raw, "__module__", "").startswith("tradecache"):
        return kind if name == "__await__" else None
    result = _returns(raw, kind.cls)
    if name == "__await__" and isinstance(result, Items):
        return result.item
    return result


def _instance_attribute(cls: type, name: str) -> bool:
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    for klass in cls.__mro__:
        if name in getattr(klass, "__slots__", ()) or name in inspect.get_annotations(klass):
            return True
        init = vars(klass).get("__init__")
        if init is None or not klass.__module__.startswith("tradecache"):
            continue
        try:
            source = inspect.getsource(init)
        except (OSError, TypeError):  # generated (dataclass) __init__: fields are checked above
            continue
        if re.search(rf"self\.{name}\b\s*[:=]", source):
            return True
    return False


class ApiChecker(ast.NodeVisitor):
    """Walks a code block in order, tracking the types of names, checking attributes and calls."""

    def __init__(self) -> None:
        self.env: dict[str, Any] = {"cache": Instance(Cache), "Cache": Klass(Cache)}
        self.problems: list[str] = []
        self.checked = 0
        self.kinds: dict[ast.AST, Any] = {}

    # types of expressions
    def kind(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name):  # names change as the block runs: never memoized
            return self.env.get(node.id)
        if node not in self.kinds:  # each node is checked (and reported) once
            self.kinds[node] = self._kind(node)
        return self.kinds[node]

    def _kind(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Await):
            return _dunder(self.kind(node.value), "__await__")
        if isinstance(node, ast.Attribute):
            return self.attribute(self.kind(node.value), node)
        if isinstance(node, ast.Call):
            return self.call(self.kind(node.func), node)
        return None

    def attribute(self, base: Any, node: ast.Attribute) -> Any:
        if not isinstance(base, Instance | Klass) or not base.cls.__module__.startswith(
            "tradecache"
        ):
            return None
        cls = base.cls
        raw = inspect.getattr_static(cls, node.attr, _MISSING)
        self.checked += 1
        if raw is _MISSING:
            if isinstance(base, Instance) and _instance_attribute(cls, node.attr):
                return None
            self.problems.append(f"line {node.lineno}: {cls.__name__} has no {node.attr!r}")
            return None
        if isinstance(raw, property | cached_property):
            return _returns(raw, cls)
        if callable(_function(raw)):
            return Method(cls, node.attr, raw)
        return None

    def call(self, target: Any, node: ast.Call) -> Any:
        if isinstance(target, Klass):
            return Instance(target.cls)
        if not isinstance(target, Method):
            return None
        self.checked += 1
        unpacked = any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        )
        fn = _function(target.raw)
        parameters = list(inspect.signature(fn).parameters.values())
        if not isinstance(target.raw, staticmethod):
            parameters = parameters[1:]  # self / cls
        sig = inspect.Signature(parameters)
        if not unpacked:
            try:
                sig.bind(*node.args, **{k.arg: k.value for k in node.keywords if k.arg})
            except TypeError as exc:
                where = f"{target.owner.__name__}.{target.name}"
                self.problems.append(f"line {node.lineno}: {where}{sig}: {exc}")
        return _returns(target.raw, target.owner)

    # binding names, in execution order
    def bind(self, target: ast.AST, kind: Any) -> None:
        if isinstance(target, ast.Name):
            self.env[target.id] = kind
        elif isinstance(target, ast.Tuple):
            for element in target.elts:
                self.bind(element, None)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            importlib.import_module(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = importlib.import_module(node.module or "")
        for alias in node.names:
            value = getattr(module, alias.name, _MISSING)
            if value is _MISSING:
                self.problems.append(f"line {node.lineno}: {node.module} has no {alias.name}")
            elif inspect.isclass(value):
                self.env[alias.asname or alias.name] = Klass(value)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.bind(target, self.kind(node.value))

    def visit_AsyncWith(self, node: ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.bind(item.optional_vars, _dunder(self.kind(item.context_expr), "__aenter__"))
        for statement in node.body:
            self.visit(statement)

    def _loop(self, node: ast.For | ast.AsyncFor | ast.comprehension) -> None:
        self.visit(node.iter)
        items = self.kind(node.iter)
        if isinstance(items, Instance):
            items = _dunder(items, "__anext__")
            self.bind(node.target, items)
        else:
            self.bind(node.target, items.item if isinstance(items, Items) else None)

    def visit_For(self, node: ast.For) -> None:
        self._loop(node)
        for statement in node.body:
            self.visit(statement)

    visit_AsyncFor = visit_For  # type: ignore[assignment]

    def visit_ListComp(self, node: ast.ListComp) -> None:
        for generator in node.generators:
            self._loop(generator)
        self.visit(node.elt)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        self.kind(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        self.kind(node)


def check_code(code: str, **names: type) -> ApiChecker:
    """Check ``code``; ``names`` are variables it uses without defining (``claim=Claim``)."""
    tree = compile(code, "<doc>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    checker = ApiChecker()
    checker.env.update({name: Instance(cls) for name, cls in names.items()})
    checker.visit(tree)
    return checker


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_checker_catches_wrong_names_and_arguments() -> None:
    bad = check_code(
        textwrap.dedent(
            """\
            from tradecache.models import Nope
            ticker = await cache.tickers.get("binance")
            await cache.tickers.fetch("binance", "BTC/USDT")
            await cache.orders.submit(order, exchange="x", queue="y")
            async with cache.lock("x") as lease:
                lease.fencing_token
            async for d in cache.orders.consume("g", "c"):
                await d.acknowledge()
            """
        )
    )
    assert [p.split(":")[0] for p in bad.problems] == [f"line {n}" for n in (1, 2, 3, 4, 6, 8)]
    good = check_code("async with cache.lock('x') as lease:\n    await lease.release()\n")
    assert good.problems == []
    assert good.checked == 4


@pytest.mark.parametrize("name", [n for n in GUIDES if n != "api_reference"])
def test_guide_code_is_true_to_the_api(name: str) -> None:
    blocks = python_blocks(getattr(tradecache.docs, name))
    assert blocks, name
    checked = 0
    for block in blocks:
        checker = check_code(block)
        assert checker.problems == [], f"{name}:\n{block}\n{checker.problems}"
        checked += checker.checked
    assert checked >= 5, name


def test_migration_table_is_true_to_the_api() -> None:
    checked = 0
    for rows in MAPPING.values():
        for theirs, ours, _ in rows:
            if not ours:
                continue
            checker = check_code(ours, claim=Claim)
            assert checker.problems == [], f"{theirs} -> {ours}: {checker.problems}"
            assert checker.checked >= 1, ours
            checked += checker.checked
    assert checked > 100


def test_migration_table_covers_what_consumers_call() -> None:
    # research/fullon_cache.md §7: the most-used surface of the reference library.
    theirs = " ".join(row[0] for rows in MAPPING.values() for row in rows)
    for call in (
        "set_ticker", "get_ticker", "get_all_tickers", "get_next_ticker", "register_process",
        "update_process", "get_active_processes", "get_system_health", "get_trades",
        "push_trade_list", "get_orders", "get_order_status", "get_bots", "is_blocked",
        "block_exchange", "get_positions", "get_all_positions", "get_full_account",
        "get_latest_ohlcv_bars", "update_ohlcv_bars", "pop_open_order", "push_open_order",
        "delete_from_top", "save_order_data", "upsert_position",
    ):  # fmt: skip
        assert re.search(rf"\b{call}\(", theirs), call
    for section in ("ProcessCache", "TickCache", "AccountCache", "OrdersCache", "BotCache",
                    "TradesCache", "OHLCVCache"):  # fmt: skip
        assert f"### {section}" in tradecache.docs.migration_guide


# --- runnable examples in the docs -----------------------------------------------------------


def _run_program(code: str, url: str, namespace: str) -> None:
    code = code.replace("redis://localhost:6379/0", url).replace('"demo"', repr(namespace))
    exec(compile(code, "<quickstart>", "exec"), {"__name__": "__doc__"})


def test_quickstart_program_runs(redis_url: str, redis_namespace: str, capsys: Any) -> None:
    _run_program(python_blocks(tradecache.docs.quickstart)[0], redis_url, redis_namespace)
    out = capsys.readouterr().out
    assert "60000.0 60000.0" in out
    assert "execute o-1 0.01" in out
    assert "bot-1 trades BTC/USDT under fence" in out


def test_help_tradecache_gives_the_overview_and_a_runnable_example(
    redis_url: str, redis_namespace: str, capsys: Any
) -> None:
    text = pydoc.render_doc(tradecache, renderer=pydoc.plaintext)
    for word in ("tickers", "Cluster", "tradecache.docs", "tradecache.examples", "Example::"):
        assert word in text, word
    block = []
    for line in (tradecache.__doc__ or "").split("Example::", 1)[1].splitlines()[1:]:
        if line.strip() and not line.startswith("    "):
            break  # the first paragraph after the indented block
        block.append(line)
    example = textwrap.dedent("\n".join(block))
    assert example.rstrip().endswith("asyncio.run(main())")
    _run_program(example, redis_url, redis_namespace)
    out = capsys.readouterr().out
    assert "BTC/USDT 60000.0" in out
    assert "bot-1 holds BTC/USDT under fence" in out


async def test_testing_guide_fault_example_runs() -> None:
    code = next(b for b in python_blocks(tradecache.docs.testing_guide) if "server.pause()" in b)
    namespace: dict[str, Any] = {"pytest": pytest}
    exec(compile(code, "<testing_guide>", "exec"), namespace)
    await namespace["test_outage_raises"]()
