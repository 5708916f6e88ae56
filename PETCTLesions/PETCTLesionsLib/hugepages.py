"""Transparent huge pages for the network's activations on Linux (glibc 2.35 and newer).

Why: on the CPU each of the network's activations is hundreds of MB. glibc serves every one
with a fresh memory mapping, and the kernel then fills it in 4 kB pages, one page fault at a
time: 8.8 million faults and about 40% of a whole-body prediction spent in the kernel. glibc's
tunable ``glibc.malloc.hugetlb=1`` asks for transparent huge pages for those mappings (the
kernel's usual ``madvise`` mode honours it). Same output; on a 400 x 400 x 326 study on two
cores the model took 43 s without and 28 s with it (``Testing/Benchmarks/benchmark_model.py``).

Tunables are read only when a process starts, so the setting goes into the environment of the
processes that run the model: the Slicer module's detection worker, and the command line's
model commands, which start again once with it. A user's own choice of the tunable stands;
other systems and older glibc ignore it.
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


def restart_with_huge_pages(command: Sequence[str]) -> None:
    """Replace this process by ``command`` with huge pages set; return only when there is nothing to change."""
    environment = environment_with_huge_pages(os.environ)
    if environment.get(TUNABLES_VARIABLE) == os.environ.get(TUNABLES_VARIABLE) or not command or not command[0]:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], list(command), environment)
