"""The registry of fuzz targets (``hyperv-emu fuzz list``)."""

from __future__ import annotations

from hyperv_emu.fuzz.chipset import CHIPSET_TARGETS
from hyperv_emu.fuzz.guest_target import GuestTarget
from hyperv_emu.fuzz.harness import Target
from hyperv_emu.fuzz.hypercalls import HypercallTarget
from hyperv_emu.fuzz.parsers import PARSER_TARGETS
from hyperv_emu.fuzz.vmbus_targets import VMBUS_TARGETS

_ALL: tuple[type[Target], ...] = (*CHIPSET_TARGETS, HypercallTarget, *PARSER_TARGETS,
                                  GuestTarget, *VMBUS_TARGETS)
TARGETS: dict[str, type[Target]] = {t.name: t for t in _ALL}


def make_target(name: str) -> Target:
    """A new instance of the target called ``name`` (KeyError if there is none)."""
    return TARGETS[name]()
