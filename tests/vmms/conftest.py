"""The ``vms`` fixture of the VMMS tests: a VM store and its worker processes in a temporary
directory, cleaned up after each test (vm_env.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vmms.vm_env import VmEnv


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[VmEnv]:
    env = VmEnv(tmp_path)
    try:
        yield env
    finally:
        env.cleanup()
