"""Importing tradecache has no side effects (DESIGN principle 6)."""

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import asyncio, logging, os, pkgutil, importlib, sys
    before_env = dict(os.environ)
    before_policy = type(asyncio.get_event_loop_policy())
    root_handlers = list(logging.getLogger().handlers)
    import tradecache
    for mod in pkgutil.walk_packages(tradecache.__path__, "tradecache."):
        if mod.name.startswith(("tradecache.testing", "tradecache.cli")):
            continue  # pytest / typer stand on top of the library
        importlib.import_module(mod.name)
    assert dict(os.environ) == before_env, "environment changed"
    assert type(asyncio.get_event_loop_policy()) is before_policy, "loop policy changed"
    assert logging.getLogger().handlers == root_handlers, "root logger touched"
    handlers = logging.getLogger("tradecache").handlers
    assert [type(h).__name__ for h in handlers] == ["NullHandler"], handlers
    assert tradecache.Settings().namespace == "tc", ".env was loaded"
    print("clean")
    """
)


def test_import_has_no_side_effects(tmp_path):
    (tmp_path / ".env").write_text("TRADECACHE_NAMESPACE=leaked\nREDIS_URL=redis://leak:1/0\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
