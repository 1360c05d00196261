"""The guest's VSS side, as Linux's hv_vss driver and its daemon (hv_vss_daemon) behave
(HYPERV_FACTS 7.4): FREEZE, THAW and HOT_BACKUP go to the daemon, and without a registered
daemon the driver answers HV_E_FAIL; FREEZE freezes the file systems (a second FREEZE fails,
as freezing a frozen file system does), THAW thaws them; HOT_BACKUP answers
VSS_HBU_NO_AUTO_RECOVERY; GET_DM_INFO answers flags 0; any other operation S_OK.  The answer
is written in place into the request's body."""

from __future__ import annotations

from hyperv_emu.vsp.ic import ic_protocol as I
from hyperv_emu.vsp.ic import vss_protocol as V


class GuestVss:
    """Whether the backup daemon runs, whether the file systems are frozen, and every
    operation the host asked for, in order."""

    def __init__(self, *, daemon: bool = True) -> None:
        self.daemon = daemon
        self.frozen = False
        self.operations: list[int] = []

    def answer(self, body: bytes) -> tuple[int, bytes]:
        """(status, body answered in place) for one VSS request body."""
        try:
            msg = V.decode(body)
        except V.VssError:
            return I.E_FAIL, body
        op = int(msg.vss_hdr.operation)
        self.operations.append(op)
        status = I.S_OK
        if op in (V.VSS_OP_FREEZE, V.VSS_OP_THAW, V.VSS_OP_HOT_BACKUP):
            if not self.daemon:
                return I.E_FAIL, body
            if op == V.VSS_OP_FREEZE:
                status = I.E_FAIL if self.frozen else I.S_OK
                self.frozen = True
            elif op == V.VSS_OP_THAW:
                self.frozen = False
            else:
                msg.flags = V.VSS_HBU_NO_AUTO_RECOVERY
        elif op == V.VSS_OP_GET_DM_INFO:
            msg.flags = 0
        return status, bytes(msg) + body[V.MSG_SIZE:]
