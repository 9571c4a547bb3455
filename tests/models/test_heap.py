"""glibc heap settings: freed tensor memory is reused instead of faulted in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# Allocates, fills and frees a 64 MiB tensor 20 times after 10 such warm-up rounds (the heap
# settles within a few); prints the minor page faults of those 20 rounds.
PROBE = """
import json, resource, sys, torch
if sys.argv[1] == "keep":
    from models.heap import keep_freed_memory
    assert keep_freed_memory()
for _ in range(10):
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 * 2**20).fill_(1.0)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(json.loads(out.stdout))


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_activations_are_reused_not_faulted_in_again() -> None:
    default, kept = _faults("default"), _faults("keep")
    # By default every 64 MiB block is a fresh mmap: 16,384 pages faulted in each time.
    assert default > 20 * 10_000, default
    assert kept < 1_000, kept
