"""The shutdown IC (HYPERV_FACTS 7.4): the host asks the guest to shut down, restart or
hibernate (flags bit 1 restart, bit 2 hibernate, bit 0 force) with a reason code and a
message; the guest answers with a status (S_OK, or E_FAIL for what it cannot do, e.g.
hibernate without support) and then acts.  The host keeps each request's answer."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import ic_protocol as I
from .common import IcDevice

#: OpenVMM's instance GUID for the shutdown IC (HYPERV_FACTS 6).
SHUTDOWN_INSTANCE = uuid.UUID("b6650ff7-33bc-4840-8048-e0676786f393")
KINDS = {"shutdown": 0, "reboot": I.SHUTDOWN_FLAG_RESTART,
         "hibernate": I.SHUTDOWN_FLAG_HIBERNATE}


@dataclass
class ShutdownRequest:
    """One host request and, once the guest answered, its status (an HRESULT)."""

    kind: str
    force: bool
    transaction: int
    status: int | None = None


class Shutdown(IcDevice):
    interface_type = I.SHUTDOWN_GUID
    msgtype = I.ICMSGTYPE_SHUTDOWN
    service_versions = ((3, 2), (3, 1), (3, 0), (1, 0))  # what Linux accepts, newest first

    def __init__(self, instance: uuid.UUID = SHUTDOWN_INSTANCE) -> None:
        super().__init__(instance, "shutdown")
        self.requests: list[ShutdownRequest] = []
        #: Called with each request once the guest has answered it.
        self.on_answer: Callable[[ShutdownRequest], None] | None = None

    @property
    def ready(self) -> bool:
        """True once the channel is open and the versions are agreed."""
        return self.channel is not None and self.negotiated is not None

    def ask(self, kind: str = "shutdown", *, force: bool = False, message: str = "",
            reason: int = I.SHTDN_REASON_FLAG_PLANNED) -> ShutdownRequest | None:
        """Ask the guest to ``kind`` (shutdown, reboot, hibernate); None if the IC is not
        ready.  The message goes out as deferred work (between slices)."""
        if kind not in KINDS:
            raise ValueError(f"unknown shutdown kind {kind!r} (known: {', '.join(KINDS)})")
        if not self.ready:
            return None
        data = I.shutdown_msg_data(reason_code=reason, timeout_seconds=0,
                                   flags=KINDS[kind] | (I.SHUTDOWN_FLAG_FORCE if force else 0))
        text = message.encode("utf-8")[:2047]
        data.display_message[:len(text)] = list(text)
        req = ShutdownRequest(kind, force, 0)
        self.requests.append(req)

        def send() -> None:
            req.transaction = self.request(I.ICMSGTYPE_SHUTDOWN, bytes(data))

        assert self.channel is not None
        self.channel.defer(send)
        return req

    def on_response(self, header: I.icmsg_hdr, body: bytes) -> None:
        for req in self.requests:
            if req.status is None:
                req.status = int(header.status)
                if self.on_answer is not None:
                    self.on_answer(req)
                return
        self._reject("shutdown answer with no request outstanding")

    def save(self) -> dict[str, Any]:
        state = super().save()
        state["requests"] = [[r.kind, r.force, r.transaction, r.status] for r in self.requests]
        return state

    def restore(self, state: dict[str, Any], channel: Any) -> None:
        super().restore(state, channel)
        self.requests = [ShutdownRequest(k, bool(f), int(t), s)
                         for k, f, t, s in state["requests"]]
