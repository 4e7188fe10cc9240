"""The parent's side of the child processes: spawn, restart, chaos, stop, kill.

Every child is ``python -m tradecache.demo.child ROLE NAME CONFIG`` in its own
session (a Ctrl-C in the terminal reaches only the parent) with
``PR_SET_PDEATHSIG`` = SIGKILL (it dies with the parent, even when paused).
Its output goes to ``<log_dir>/<name>.log``. A child that exits on its own is
a crash: it is recorded (with the end of its log) and replaced::

    supervisor = Supervisor(config, log_dir, note=print)
    supervisor.start_all()                      # feed, monitor, executors, bots
    await supervisor.chaos("kill-bot")          # SIGKILL a bot, start a new one
    await supervisor.stop(("bot",))             # SIGTERM, wait, SIGKILL if stuck
    supervisor.kill_all()                       # whatever is left, at once
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..server import set_parent_death_signal
from .common import DemoConfig

__all__ = ["CHAOS", "Child", "Supervisor"]

# The chaos actions, in the order --chaos runs them (then again from the top).
CHAOS = ("pause-bot", "kill-executor", "outage", "kill-bot", "pause-executor")
_PREFIX = {"feed": "feed", "monitor": "monitor", "executor": "exec", "bot": "bot"}


@dataclass(eq=False)
class Child:
    """One child process; ``name`` is its process component, bot account or consumer name."""

    role: str
    slot: int
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    paused_until: float | None = None
    kill_at: float | None = None  # chaos: killed then (it is paused until then) ...
    kill_by: float = 0.0  # ... or at the latest then, if the runner postpones it
    expected: bool = False  # its exit is ours (chaos or shutdown), not a crash

    @property
    def pid(self) -> int:
        """The OS process id.

        Example: ``os.kill(child.pid, signal.SIGSTOP)``
        """
        return self.proc.pid

    @property
    def running(self) -> bool:
        """True while the process exists (also while paused).

        Example: ``if not child.running: ...``
        """
        return self.proc.poll() is None

    def tail(self, lines: int = 5) -> str:
        """The last ``lines`` lines of its log.

        Example: ``print(child.tail(5))``
        """
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class Supervisor:
    """Starts and watches the demo's children; ``note(text)`` receives what it does."""

    def __init__(self, config: DemoConfig, log_dir: Path, note: Callable[[str], None]) -> None:
        self.config = config
        self.log_dir = log_dir
        self.note = note
        self.rng = random.Random(config.seed)
        self.current: dict[tuple[str, int], Child] = {}
        self.everyone: list[Child] = []
        self.incarnations: Counter[tuple[str, int]] = Counter()
        self.crashes: list[str] = []
        self.chaos_done: Counter[str] = Counter()
        self._chaos_next = 0

    # --- spawning ----------------------------------------------------------------------------

    def spawn(self, role: str, slot: int) -> Child:
        """Start (or restart) the child of ``role`` number ``slot``; returns it.

        Example: ``supervisor.spawn("bot", 3)   # bot3 (bot3r1 the second time)``
        """
        n = self.incarnations[role, slot]
        self.incarnations[role, slot] += 1
        name = _PREFIX[role] + (str(slot) if role in ("bot", "executor") else "")
        name += f"r{n}" if n else ""
        log = self.log_dir / f"{name}.log"
        command = [sys.executable, "-m", "tradecache.demo.child", role, name]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*command, self.config.encode()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=set_parent_death_signal(signal.SIGKILL),  # noqa: PLW1509
                close_fds=True,
            )
        child = Child(role, slot, name, proc, log)
        self.current[role, slot] = child
        self.everyone.append(child)
        return child

    def start_all(self) -> None:
        """Start the feed, the monitor, the executors and the bots.

        Example: ``supervisor.start_all()``
        """
        self.spawn("feed", 0)
        self.spawn("monitor", 0)
        for slot in range(1, self.config.executors + 1):
            self.spawn("executor", slot)
        for slot in range(1, self.config.bots + 1):
            self.spawn("bot", slot)

    def names(self, role: str | None = None) -> list[str]:
        """Names of every child ever started (of ``role``), in start order.

        Example: ``supervisor.names("bot")   # ['bot1', 'bot2', 'bot1r1']``
        """
        return [c.name for c in self.everyone if role is None or c.role == role]

    def doomed(self) -> list[Child]:
        """Frozen children (chaos) whose kill is due: the runner may postpone it once more.

        Example: ``for child in supervisor.doomed(): child.kill_at += 0.25``
        """
        now = time.monotonic()
        return [c for c in self.current.values() if c.kill_at is not None and c.kill_at <= now]

    def alive(self) -> list[Child]:
        """The current children that are running.

        Example: ``len(supervisor.alive())``
        """
        return [c for c in self.current.values() if c.running]

    def pids(self) -> list[int]:
        """Process ids of every child ever started.

        Example: ``all(not pid_alive(p) for p in supervisor.pids())``
        """
        return [c.pid for c in self.everyone]

    # --- watching ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Resume paused children whose pause is over; record and replace crashed ones.

        Example: ``supervisor.poll()   # every refresh``
        """
        now = time.monotonic()
        for child in list(self.current.values()):
            if child.paused_until is not None and now >= child.paused_until:
                self._resume(child)
            if child.kill_at is not None and now >= child.kill_at:
                self._replace(child)
                continue
            code = child.proc.poll()
            if code is None or child.expected:
                continue
            child.expected = True
            tail = child.tail().replace("\n", " | ")
            self.crashes.append(f"{child.name} exited with code {code}: {tail}")
            self.note(f"[red]{child.name} exited with code {code}[/]; restarting it")
            self.spawn(child.role, child.slot)

    def _resume(self, child: Child) -> None:
        child.paused_until = child.kill_at = None
        if child.running:
            os.kill(child.pid, signal.SIGCONT)
            self.note(f"chaos: resumed {child.name}")

    # --- chaos -------------------------------------------------------------------------------

    async def chaos(self, action: str | None = None) -> str:
        """Run one chaos action (the next one in :data:`CHAOS` by default); returns it.

        ``outage`` is left to the caller (it needs Redis): this only counts it.

        Example: ``await supervisor.chaos("pause-bot")``
        """
        if action is None:
            action = CHAOS[self._chaos_next % len(CHAOS)]
            self._chaos_next += 1
        kind, _, role = action.partition("-")
        if kind == "outage":
            self.chaos_done[action] += 1
            return action
        victims = [
            c
            for c in self.alive()
            if c.role == role and c.paused_until is None and c.kill_at is None
        ]
        if not victims:
            return action
        victim = self.rng.choice(victims)
        self.chaos_done[action] += 1
        if kind == "pause":
            pause = self.config.claim_ttl + 1.0 if role == "bot" else 0.5
            os.kill(victim.pid, signal.SIGSTOP)
            victim.paused_until = time.monotonic() + pause
            self.note(f"chaos: paused {victim.name} (pid {victim.pid}) for {pause:g}s")
        elif role == "executor":
            # Frozen first: orders keep being delivered to its blocked read, so it dies
            # holding orders the other executors must reclaim.
            os.kill(victim.pid, signal.SIGSTOP)
            victim.kill_at = time.monotonic() + 0.75
            victim.kill_by = victim.kill_at + 3.0
            self.note(f"chaos: froze {victim.name} (pid {victim.pid}), killing it")
        else:
            self._replace(victim)
        return action

    def _replace(self, victim: Child) -> None:
        victim.expected = True
        victim.kill_at = victim.paused_until = None
        victim.proc.kill()
        victim.proc.wait()
        replacement = self.spawn(victim.role, victim.slot)
        self.note(f"chaos: killed {victim.name}; started {replacement.name}")

    # --- stopping ----------------------------------------------------------------------------

    async def stop(self, roles: Iterable[str], grace: float = 15.0) -> None:
        """SIGTERM the current children of ``roles`` (resumed first), wait, SIGKILL laggards.

        Example: ``await supervisor.stop(("executor", "feed", "monitor"))``
        """
        wanted = set(roles)
        children = [c for c in self.current.values() if c.role in wanted]
        for child in children:
            child.expected = True
            if child.running:
                if child.paused_until is not None or child.kill_at is not None:
                    self._resume(child)
                child.proc.terminate()
        codes = await asyncio.gather(*(_exit_code(c, grace) for c in children))
        for child, code in zip(children, codes, strict=True):
            if code is None:
                self.crashes.append(f"{child.name} did not stop within {grace:g}s: killed")
                os.kill(child.pid, signal.SIGUSR2)  # where its tasks wait, into its log
                os.kill(child.pid, signal.SIGUSR1)  # and its threads' stacks
                await asyncio.sleep(0.3)
                child.proc.kill()
                await asyncio.to_thread(child.proc.wait)
            # -SIGTERM: stopped before it could install its handler, i.e. before it did anything.
            elif code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                tail = child.tail().replace("\n", " | ")
                self.crashes.append(f"{child.name} stopped with code {code}: {tail}")

    def kill_all(self) -> None:
        """SIGKILL every child still running and reap it (always safe to call).

        Example: ``supervisor.kill_all()``
        """
        for child in self.everyone:
            child.expected = True
            if child.running:
                child.proc.kill()
        for child in self.everyone:
            child.proc.wait()


async def _exit_code(child: Child, grace: float) -> int | None:
    """The child's exit code once it exits, or ``None`` if it is still running after ``grace``."""
    try:
        return await asyncio.to_thread(child.proc.wait, grace)
    except subprocess.TimeoutExpired:
        return None
