"""Host requests to a running VM's integration services, as the worker serves them: a graceful
stop through the shutdown IC (``vm stop``), a VSS freeze/thaw/hot-backup/check (``vm vss``)
and the guest's IP configuration through KVP (``vm ip-info``).

Each request goes out through the VM's VMBus host (worker/vmbus_host.py) and is answered once
the guest has answered, or once a bound of *virtual* time has passed without an answer (the
guest runs meanwhile; a deterministic run gives the same outcome every time).  A graceful stop
that cannot be asked (no shutdown IC, or the guest never opened it), that the guest refuses,
or that the guest does not complete in time ends in a power-off, as ``--turn-off`` does at
once.  The worker polls :meth:`Pending.outcome` between its run slices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from hyperv_emu.clock import NS_PER_SEC
from hyperv_emu.vsp.ic import ic_protocol as I

if TYPE_CHECKING:
    from hyperv_emu.vsp.ic.kvp import KvpRequest
    from hyperv_emu.vsp.ic.vss import VssRequest
    from hyperv_emu.worker.machine import Machine
    from hyperv_emu.worker.vmbus_host import VmbusHost


class _Answerable(Protocol):
    """A host request the guest answers with a status (KvpRequest, VssRequest)."""

    status: int | None


R = TypeVar("R", bound=_Answerable)

#: Virtual seconds a graceful stop waits for the guest to shut down before turning it off
#: (Hyper-V documents no figure; a guest OS shutting down within this is the common case).
STOP_TIMEOUT_S = 30.0
#: Virtual seconds an IC request waits for the guest's answer.
ANSWER_TIMEOUT_S = 10.0


class IcRequestError(ValueError):
    """The request cannot be made on this VM; the message is for the user."""


@dataclass
class Pending:
    """One request in flight: ``check()`` returns the answer once there is one (else None);
    past ``deadline_ns`` of virtual time, ``expired()`` gives the answer instead."""

    check: Callable[[], dict[str, Any] | None]
    expired: Callable[[], dict[str, Any]]
    deadline_ns: int

    def outcome(self, machine: Machine) -> dict[str, Any] | None:
        """The answer for the client, or None while the guest may still answer."""
        answer = self.check()
        if answer is None and machine.clock.now() >= self.deadline_ns:
            answer = self.expired()
        return answer


def _deadline(machine: Machine, seconds: float) -> int:
    if not seconds > 0:
        raise IcRequestError(f"a timeout of {seconds} s: it must be positive")
    return machine.clock.now() + int(seconds * NS_PER_SEC)


def graceful_stop(machine: Machine, timeout_s: float = STOP_TIMEOUT_S) -> Pending | str:
    """Ask the guest to shut down through the shutdown IC.  Returns the pending request (its
    outcome says why it turned the VM off, if it had to: ``{"turn_off": reason}``; the guest
    ending the run by itself is the worker's to see), or a reason to turn the VM off now."""
    host = machine.vmbus
    if host is None or host.shutdown is None:
        return "no shutdown integration service"
    deadline = _deadline(machine, timeout_s)
    req = host.request_shutdown("shutdown", message="hyperv-emu vm stop")
    if req is None:
        return "the guest has not opened the shutdown integration service"

    def check() -> dict[str, Any] | None:
        if req.status is not None and req.status != I.S_OK:
            return {"turn_off": f"the guest refused to shut down (status {req.status:#x})"}
        return None

    return Pending(check, lambda: {"turn_off": f"the guest did not shut down within "
                                               f"{timeout_s:g} s"}, deadline)


def vss(machine: Machine, action: str, timeout_s: float = ANSWER_TIMEOUT_S) -> Pending:
    """A VSS request (freeze, thaw, hot-backup, check)."""
    def answer(req: VssRequest) -> dict[str, Any]:
        if req.status != I.S_OK:
            return {"ok": False, "error": f"the guest failed VSS {req.name} (status "
                                          f"{_word(req.status):#x})"}
        vss = machine.vmbus.vss if machine.vmbus is not None else None
        return {"ok": True, "operation": req.name, "flags": req.flags,
                "frozen": bool(vss and vss.frozen)}

    return _answered(machine, lambda host: host.request_vss(action), answer, timeout_s,
                     lambda req: f"VSS {req.name}", "VSS")


def ip_info(machine: Machine, adapter_id: str, timeout_s: float = ANSWER_TIMEOUT_S) -> Pending:
    """KVP GET_IP_INFO for the adapter with MAC address ``adapter_id``."""
    def answer(req: KvpRequest) -> dict[str, Any]:
        if req.status != I.S_OK or req.ip is None:
            return {"ok": False, "error": f"the guest has no IP information for adapter "
                                          f"{adapter_id} (status {_word(req.status):#x})"}
        return {"ok": True, "ip_info": asdict(req.ip)}

    return _answered(machine, lambda host: host.guest_ip_info(adapter_id), answer, timeout_s,
                     lambda req: "GET_IP_INFO", "KVP")


def _word(status: int | None) -> int:
    """An answered request's status as the 32-bit HRESULT word it is on the wire."""
    return (status or 0) & 0xFFFF_FFFF


def _answered(machine: Machine, ask: Callable[[VmbusHost], R],
              answer: Callable[[R], dict[str, Any]], timeout_s: float,
              what: Callable[[R], str], service: str) -> Pending:
    """A request ``ask`` makes of the VM's VMBus host, answered by ``answer(req)`` once the
    guest has given the request its status, or by a "no answer" error past the deadline."""
    host = machine.vmbus
    if host is None:
        raise IcRequestError("this VM has no VMBus (no Hyper-V interface)")
    deadline = _deadline(machine, timeout_s)
    try:
        req = ask(host)
    except ValueError as exc:
        raise IcRequestError(str(exc)) from None
    return Pending(lambda: None if req.status is None else answer(req),
                   lambda: {"ok": False, "error": f"no answer to {what(req)} within "
                                                  f"{timeout_s:g} s (has the guest opened "
                                                  f"the {service} service?)"},
                   deadline)
