import subprocess
import sys

import pytest

# Allocates and fills a 64 MB tensor fifteen times and prints the page faults of the last twelve: with
# glibc's default each one is a fresh mmap (16,384 faults of 4 kB); kept memory is reused. Not always
# all of it: a small block the reduction allocates can land inside a freed 64 MB one, and the next
# 64 MB then grows the heap (seen: 0-3 of 7 blocks faulted again), so the test asks for half.
FAULTS = """
import resource, sys, torch
from alexnet.runtime import keep_freed_memory
applied = keep_freed_memory()
for _ in range(3):  # the heap settles after a block or two
    torch.ones(16 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    torch.ones(16 * 2**20).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str) -> tuple[str, int]:
    env = {"ALEXNET_MALLOC": env_value, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_large_blocks():
    applied, kept = _faults("1")
    default_applied, default = _faults("0")
    assert (applied, default_applied) == ("True", "False")
    assert default > 12 * 16_000  # twelve fresh 64 MB mappings
    assert kept < default / 2
