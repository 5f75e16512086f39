"""runtime.keep_freed_memory: large freed buffers are reused without page faults (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocate and free ten tensors of 128 MB down to 92 MB, each written in full, one after the other; print the minor
# page faults that took. glibc's default maps each block afresh (faulting in all its pages) and unmaps it on free;
# kept on the heap, each block fits in the space the one before it freed, whose pages are already there.
PROGRAM = """
import resource, sys, torch
from seqtool.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.empty(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(10):
    x = torch.ones((128 - 4 * i) * 256 * 1024)  # 128 MB, 124 MB, ..., written: every page touched
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_large_buffers_are_reused_without_page_faults() -> None:
    pages = 128 * 1024 * 1024 // 4096
    assert faults("default") > 8 * pages  # glibc's default: every allocation maps and faults the block anew
    assert faults("keep") < 2 * pages  # kept: the block is faulted in once, then reused
