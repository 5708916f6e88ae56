"""Huge pages for the network's memory: the environment of the processes that run the model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from PETCTLesionsLib.hugepages import environment_with_huge_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc (Linux) setting")


def test_the_tunable_is_added_beside_others_and_a_users_own_choice_stands():
    assert environment_with_huge_pages({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.check=3"})["GLIBC_TUNABLES"] == (
        "glibc.malloc.check=3:glibc.malloc.hugetlb=1"
    )
    own = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.check=3"}
    assert environment_with_huge_pages(own) == own


def _run(code: str, **environment: str) -> str:
    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    env.update(environment)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


RESTART = (
    "import os, sys\n"
    "from PETCTLesionsLib.hugepages import restart_with_huge_pages\n"
    "print('before', os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
    'child = \'import os; print("restarted", os.environ["GLIBC_TUNABLES"])\'\n'
    "restart_with_huge_pages([sys.executable, '-c', child])\n"
    "print('not restarted')\n"
)


def test_a_process_starts_again_once_with_huge_pages_and_not_when_they_are_set():
    assert _run(RESTART).splitlines() == ["before None", "restarted glibc.malloc.hugetlb=1"]
    assert _run(RESTART, GLIBC_TUNABLES="glibc.malloc.hugetlb=1").splitlines() == [
        "before glibc.malloc.hugetlb=1",
        "not restarted",
    ]
