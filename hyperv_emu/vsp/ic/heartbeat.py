"""The heartbeat IC (HYPERV_FACTS 7.4): every interval the host sends a sequence number, the
guest answers with it plus one, and the host keeps the guest's health:

* ``no-contact`` until the first correct answer (also when negotiation failed),
* ``ok`` after a correct answer,
* ``lost`` once :attr:`Heartbeat.lost_after` intervals in a row pass without one.

The interval runs on the virtual clock (Linux notes real hosts send about every 2 s; 1 s by
default here keeps guest runs short).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from hyperv_emu.clock import NS_PER_SEC, Timer
from hyperv_emu.vsp.framework import DeviceChannel

from . import ic_protocol as I
from .common import IcDevice

#: Host-chosen instance GUID (real Hyper-V's is not documented: HYPERV_FACTS 10.7).
HEARTBEAT_INSTANCE = uuid.UUID("a23b8bb0-3d56-4a6c-9e8e-0c2b8f0e6b01")
NO_CONTACT, OK, LOST = "no-contact", "ok", "lost"


class Heartbeat(IcDevice):
    interface_type = I.HEARTBEAT_GUID
    msgtype = I.ICMSGTYPE_HEARTBEAT
    service_versions = ((3, 0), (1, 0))  # what Linux accepts, newest first

    def __init__(self, *, interval_ns: int = NS_PER_SEC, lost_after: int = 3,
                 instance: uuid.UUID = HEARTBEAT_INSTANCE) -> None:
        super().__init__(instance, "heartbeat")
        self.interval_ns = interval_ns
        self.lost_after = lost_after
        self.health = NO_CONTACT
        self.seq = 0
        self.answers = 0
        self.missed = 0
        self._awaiting: int | None = None  # the answer expected for the last request
        self._timer: Timer | None = None
        #: Called after each correct answer (the worker counts them for a scheduled shutdown).
        self.on_answer: Callable[[], None] | None = None

    def start(self) -> None:
        assert self.channel is not None
        if self._timer is None:
            self._timer = self.channel.timer(self._tick, "heartbeat")
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._awaiting = None

    def _tick(self) -> None:
        if self.channel is None or self.negotiated is None:
            return
        if self._awaiting is not None:
            self.missed += 1
            if self.health == OK and self.missed >= self.lost_after:
                self.health = LOST
        self._awaiting = (self.seq + 1) & 0xFFFF_FFFF_FFFF_FFFF
        self.request(I.ICMSGTYPE_HEARTBEAT, bytes(I.heartbeat_msg_data(seq_num=self.seq)))
        if self._timer is not None:
            self._timer.arm_in(self.interval_ns)

    def on_response(self, header: I.icmsg_hdr, body: bytes) -> None:
        if len(body) < 8:
            return self._reject("heartbeat answer without a sequence number")
        seq = int.from_bytes(body[:8], "little")
        if self._awaiting is None or seq != self._awaiting:
            return self._reject(f"heartbeat answer {seq}, expected {self._awaiting}")
        self.seq = seq
        self._awaiting = None
        self.answers += 1
        self.missed = 0
        self.health = OK
        if self.on_answer is not None:
            self.on_answer()

    def save(self) -> dict[str, Any]:
        state = super().save()
        state.update(health=self.health, seq=self.seq, answers=self.answers,
                     missed=self.missed, awaiting=self._awaiting,
                     deadline=None if self._timer is None else self._timer.deadline)
        return state

    def restore(self, state: dict[str, Any], channel: DeviceChannel | None) -> None:
        super().restore(state, channel)
        self.health = str(state["health"])
        self.seq, self.answers = int(state["seq"]), int(state["answers"])
        self.missed = int(state["missed"])
        self._awaiting = state["awaiting"]
        self.stop()
        self._awaiting = state["awaiting"]
        if channel is not None and state["deadline"] is not None:
            self._timer = channel.timer(self._tick, "heartbeat")
            self._timer.arm(int(state["deadline"]))
