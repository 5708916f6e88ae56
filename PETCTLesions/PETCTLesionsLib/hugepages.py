"""Transparent huge pages for the network's activations on Linux (glibc 2.35 and newer).

Why: on the CPU each of the network's activations is hundreds of MB. glibc serves every one
with a fresh memory mapping, and the kernel then fills it in 4 kB pages, one page fault at a
time: 8.8 million faults and about 40% of a whole-body prediction spent in the kernel. glibc's
tunable ``glibc.malloc.hugetlb=1`` asks for transparent huge pages for those mappings (the
kernel's usual ``madvise`` mode honours it).

Tunables are read only when a process starts, so the setting goes into the environment of the
processes that run the model: the Slicer module's detection worker, and the command line's
model commands, which start again once with it. A user's own choice of the tunable stands;
other systems and older glibc ignore it.

The reference path is the same process without the tunable: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0``
(:func:`environment_without_huge_pages`), which the restart leaves alone. Both give the same
probabilities, bit for bit (``Testing/Python/test_speedups.py``). Measured
(``Testing/Benchmarks/benchmark_speedups.py``, 2-core machine, load average under 2, 2026-12-06,
median of 3, a fresh process each run): the model on a 400 x 400 x 326 study in 31.2 s with huge
pages, 36.6 s without (1.18x, 5.5 s saved). Page faults fall 50-fold (760,000 to 15,000 on a
200 x 200 x 160 study), but the kernel still zeroes every byte, now in 2 MB pages: the gain is
smaller than the faults suggest (an earlier measurement, 28 s against 43 s, was not reproduced).
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Mapping, Sequence

TUNABLES_VARIABLE = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"


def environment_with_huge_pages(environment: Mapping[str, str]) -> Dict[str, str]:
    """``environment`` with ``glibc.malloc.hugetlb=1`` added on Linux, unless it sets that tunable already."""
    result = dict(environment)
    if not sys.platform.startswith("linux"):
        return result
    current = result.get(TUNABLES_VARIABLE, "")
    if any(item.split("=", 1)[0] == HUGE_PAGES_TUNABLE for item in current.split(":")):
        return result
    result[TUNABLES_VARIABLE] = ":".join(item for item in (current, f"{HUGE_PAGES_TUNABLE}=1") if item)
    return result


def environment_without_huge_pages(environment: Mapping[str, str]) -> Dict[str, str]:
    """``environment`` with ``glibc.malloc.hugetlb=0``: the reference path, glibc's own allocation (any
    other tunable kept)."""
    result = dict(environment)
    others = [item for item in result.get(TUNABLES_VARIABLE, "").split(":") if item]
    kept = [item for item in others if item.split("=", 1)[0] != HUGE_PAGES_TUNABLE]
    result[TUNABLES_VARIABLE] = ":".join([*kept, f"{HUGE_PAGES_TUNABLE}=0"])
    return result


def restart_with_huge_pages(command: Sequence[str]) -> None:
    """Replace this process by ``command`` with huge pages set; return only when there is nothing to change."""
    environment = environment_with_huge_pages(os.environ)
    if environment.get(TUNABLES_VARIABLE) == os.environ.get(TUNABLES_VARIABLE) or not command or not command[0]:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], list(command), environment)
