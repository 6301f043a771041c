"""Fault injection for the crash tests: a named point where the process dies as `kill -9` would.

Production code calls `crash_point("name")` between the writes whose atomicity kbchat promises; it
does nothing unless $KBCHAT_CRASH_AT names that point, which only the fault tests and `bench/soak.py`
set.
"""

from __future__ import annotations

import os
import signal

from kbchat.config import ENV_CRASH_AT, env


def crash_point(name: str) -> None:
    """Die at once (SIGKILL: no cleanup, no flush, no rollback) if $KBCHAT_CRASH_AT is `name`."""
    if env(ENV_CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
