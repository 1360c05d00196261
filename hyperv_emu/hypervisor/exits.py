"""Why :meth:`Partition.run` returned."""

from __future__ import annotations

from dataclasses import dataclass

STOP = "stop"
HALTED = "halted"
TRIPLE_FAULT = "triple-fault"
INSTRUCTION_LIMIT = "instruction-limit"
TIMEOUT = "timeout"
FAULT = "fault"
RESET = "reset"


@dataclass(frozen=True)
class RunExit:
    """The reason a run ended, with detail text and the VP/RIP it concerns (if any)."""

    reason: str
    detail: str = ""
    vp: int | None = None
    rip: int | None = None
