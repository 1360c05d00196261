"""The VSS (backup) IC (HYPERV_FACTS 7.4): the host asks the guest to freeze its file systems
before a backup or snapshot and to thaw them after, checks whether it can take a hot backup
(HOT_BACKUP: the guest answers its feature flags, Linux VSS_HBU_NO_AUTO_RECOVERY) and asks for
its dynamic-disk information (GET_DM_INFO).

Requests go one at a time (Linux's driver serves one transaction at a time) and wait in a
queue; each completes with the guest's status (S_OK or HV_E_FAIL, e.g. from a guest whose
backup daemon is not running) and its answer flags.  The host keeps whether the guest is
frozen: FREEZE answered S_OK freezes, THAW answered S_OK thaws.  A guest answer too short to
hold ``hv_vss_msg`` completes its request with :data:`BAD_ANSWER`, never a host exception.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyperv_emu.vsp.framework import DeviceChannel

from . import ic_protocol as I
from . import vss_protocol as V
from .one_at_a_time import OneAtATime

#: Host-chosen instance GUID (real Hyper-V's is not documented: HYPERV_FACTS 10.7).
VSS_INSTANCE = uuid.UUID("5c1c6a37-3d3e-4b8f-9a51-2f0c5e7d9b02")
#: Status of a request whose answer could not be decoded.
BAD_ANSWER = -1
#: The host actions by name (CLI and management words) and their operations.
ACTIONS = {"freeze": V.VSS_OP_FREEZE, "thaw": V.VSS_OP_THAW,
           "hot-backup": V.VSS_OP_HOT_BACKUP, "check": V.VSS_OP_GET_DM_INFO}


@dataclass
class VssRequest:
    """One host request; once answered, the guest's status and answer flags."""

    operation: int
    status: int | None = None
    flags: int | None = None
    on_done: Callable[[VssRequest], None] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.status is not None

    @property
    def name(self) -> str:
        return V.OP_NAMES.get(self.operation, str(self.operation))

    def to_list(self) -> list[Any]:
        return [self.operation, self.status, self.flags]

    @classmethod
    def from_list(cls, data: list[Any]) -> VssRequest:
        op, status, flags = data
        return cls(int(op), None if status is None else int(status),
                   None if flags is None else int(flags))


class Vss(OneAtATime[VssRequest]):
    interface_type = I.VSS_GUID
    msgtype = I.ICMSGTYPE_VSS
    service_versions = V.VSS_VERSIONS

    def __init__(self, instance: uuid.UUID = VSS_INSTANCE) -> None:
        super().__init__(instance, "vss")
        #: True between a FREEZE and a THAW the guest both answered S_OK.
        self.frozen = False

    # ---- host API ------------------------------------------------------------------------------
    def ask(self, action: str) -> VssRequest:
        """Queue ``action`` (freeze, thaw, hot-backup, check); sent once the IC is ready and
        the requests before it are answered.  ValueError for an unknown action."""
        if action not in ACTIONS:
            raise ValueError(f"unknown VSS action {action!r} (known: {', '.join(ACTIONS)})")
        return self.submit(VssRequest(ACTIONS[action]))

    # ---- the service ---------------------------------------------------------------------------
    def start(self) -> None:
        self.pump()

    def body(self, req: VssRequest) -> bytes:
        return V.message(req.operation)

    def on_response(self, header: I.icmsg_hdr, body: bytes) -> None:
        req = self.answered("VSS")
        if req is None:
            return
        try:
            msg = V.decode(body)
        except V.VssError as exc:
            self._reject(f"VSS {req.name} answer: {exc}")
            self._finish(req, BAD_ANSWER, None)
        else:
            if int(msg.vss_hdr.operation) != req.operation:
                self._reject(f"VSS {req.name} answered as operation {msg.vss_hdr.operation}")
                self._finish(req, BAD_ANSWER, None)
            else:
                status = int(header.status)
                if status == I.S_OK and req.operation in (V.VSS_OP_FREEZE, V.VSS_OP_THAW):
                    self.frozen = req.operation == V.VSS_OP_FREEZE
                self._finish(req, status, int(msg.flags))
        self.pump()

    def _finish(self, req: VssRequest, status: int, flags: int | None) -> None:
        req.status, req.flags = status, flags
        self.done(req)

    # ---- state ---------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        state = super().save()
        state.update(frozen=self.frozen, queue=[r.to_list() for r in self.queue],
                     current=None if self.current is None else self.current.to_list(),
                     completed=[r.to_list() for r in self.completed])
        return state

    def restore(self, state: dict[str, Any], channel: DeviceChannel | None) -> None:
        super().restore(state, channel)
        self.frozen = bool(state["frozen"])
        self.queue = deque(VssRequest.from_list(r) for r in state["queue"])
        cur = state["current"]
        self.current = None if cur is None else VssRequest.from_list(cur)
        self.completed = [VssRequest.from_list(r) for r in state["completed"]]
