"""keep_freed_memory: a large buffer freed and allocated again comes back without new page faults."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

LOOP = """
import resource, sys
import numpy as np
from xreflect.core.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
np.ones(8 * 2 ** 20)  # one 64 MiB buffer before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(8 * 2 ** 20)  # 64 MiB, written and freed: a training step's tensors, in small
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    without, kept = page_faults("plain"), page_faults("keep")
    assert kept * 5 < without, (kept, without)
