"""kbchat's malloc setting (kbchat.runtime.allocator): sequential AlphaEdit solves, whose earlier keys
grow by a row per edit, leave the process's memory flat."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from kbchat.runtime.allocator import return_large_blocks

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")


@glibc
def test_the_threshold_is_set_on_glibc():
    assert return_large_blocks() is True


@glibc
def test_growing_solves_leave_memory_flat_with_the_setting():
    # glibc's defaults grow this process by ~2.4 GiB between edits 50 and 100 (the bench's figures); the
    # cap stops such a run at 50 edits, so a missing setting fails here rather than taking the machine.
    out = subprocess.run([sys.executable, "-m", "bench.alphaedit_memory", "--setting", "kbchat", "--part", "solves",
                          "--edits", "100", "--cap", "1500"], check=True, capture_output=True, text=True).stdout
    rss = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    assert set(rss) == {50, 100}
    assert rss[100] - rss[50] < 100, rss
