"""spectra.io.memory: freed blocks of a few MB go back to the OS, whatever was freed before."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from spectra.io.memory import release_large_blocks

SCRIPT = """
import sys
import numpy as np
from spectra.io.memory import release_large_blocks

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "set":
    assert release_large_blocks()
big = np.ones(24 * 2**20 // 8)  # mapped; freeing it raises glibc's threshold to 24 MB
del big
before = resident_mb()
blocks, pins = [], []
for _ in range(10):
    blocks.append(np.ones(8 * 2**20 // 8))  # 8 MB, written: resident
    pins.append(np.ones(4096))  # 32 KB after each: the heap cannot shrink past it
del blocks
print(resident_mb() - before)
"""


def _retained_mb(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting, read in /proc")
def test_freed_blocks_are_returned_with_the_setting_and_kept_without():
    kept = _retained_mb("default")  # the control: glibc's raised threshold keeps some (32 MB)
    returned = _retained_mb("set")
    assert kept > 16, f"control: only {kept:.0f} MB of 80 MB kept without the setting"
    assert returned < 4, f"{returned:.0f} MB of 80 MB freed but still resident"


def test_does_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert release_large_blocks() is False
