"""The time synchronization IC (HYPERV_FACTS 7.4): the host sends its time to the guest.

Right after negotiation the host sends one message with ICTIMESYNCFLAG_SYNC (the guest sets
its clock), then one with ICTIMESYNCFLAG_SAMPLE every :attr:`Timesync.sample_interval_ns` of
virtual time (the guest may discipline its clock with them); :meth:`Timesync.sync` sends
another SYNC (after a restore, say).  Service version 4 carries the host time and the guest's
TIME_REF_COUNT at the moment it was taken (``ictimesync_ref_data``), versions 1 and 3 the host
time alone (``ictimesync_data``; childtime and roundtriptime are the guest's to fill).  Host
time comes from the worker: in deterministic mode it is the RTC's base plus virtual time, so
every run hands the guest the same times.  The guest answers each message in place (Linux
does); the host keeps count.  The sample interval (5 s) is this host's choice: Hyper-V's is
not documented.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import Any

from hyperv_emu.clock import NS_PER_SEC, Timer
from hyperv_emu.vsp.framework import DeviceChannel

from . import ic_protocol as I
from .common import IcDevice

#: OpenVMM's instance GUID for the time sync IC (HYPERV_FACTS 6).
TIMESYNC_INSTANCE = uuid.UUID("2dd1ce17-079e-403c-b352-a1921ee207ee")
_EPOCH_1601 = datetime.datetime(1601, 1, 1)


def filetime_of(t: datetime.datetime) -> int:
    """``t`` (naive = UTC) in 100 ns units since 1601-01-01, the IC's time unit."""
    if t.tzinfo is not None:
        t = t.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    delta = t - _EPOCH_1601
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


class Timesync(IcDevice):
    interface_type = I.TIMESYNC_GUID
    msgtype = I.ICMSGTYPE_TIMESYNC
    service_versions = ((4, 0), (3, 0), (1, 0))  # what Linux accepts, newest first

    def __init__(self, host_time: Callable[[], int], reference_time: Callable[[], int], *,
                 sample_interval_ns: int = 5 * NS_PER_SEC,
                 instance: uuid.UUID = TIMESYNC_INSTANCE) -> None:
        """``host_time()``: now, in 100 ns since 1601 (UTC); ``reference_time()``: the
        guest's TIME_REF_COUNT now."""
        super().__init__(instance, "timesync")
        self.host_time = host_time
        self.reference_time = reference_time
        self.sample_interval_ns = sample_interval_ns
        #: (flags, parenttime) of every message sent, in order.
        self.sent: list[tuple[int, int]] = []
        self.answers = 0
        self._timer: Timer | None = None

    def start(self) -> None:
        assert self.channel is not None
        if self._timer is None:
            self._timer = self.channel.timer(self._sample, "timesync")
        self._send(I.ICTIMESYNCFLAG_SYNC)
        self._timer.arm_in(self.sample_interval_ns)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None

    def sync(self) -> bool:
        """Send a SYNC now (as deferred work); False while the IC is not negotiated."""
        if self.channel is None or self.negotiated is None:
            return False
        self.channel.defer(lambda: self._send(I.ICTIMESYNCFLAG_SYNC))
        return True

    def _sample(self) -> None:
        if self.channel is None or self.negotiated is None:
            return
        self._send(I.ICTIMESYNCFLAG_SAMPLE)
        if self._timer is not None:
            self._timer.arm_in(self.sample_interval_ns)

    def _send(self, flags: int) -> None:
        if self.channel is None or self.negotiated is None:
            return
        now = self.host_time()
        body: bytes
        if self.negotiated[1] >= (4, 0):
            body = bytes(I.ictimesync_ref_data(parenttime=now,
                                               vmreferencetime=self.reference_time(),
                                               flags=flags))
        else:
            body = bytes(I.ictimesync_data(parenttime=now, flags=flags))
        self.sent.append((flags, now))
        self.request(I.ICMSGTYPE_TIMESYNC, body)

    def on_response(self, header: I.icmsg_hdr, body: bytes) -> None:
        self.answers += 1

    def save(self) -> dict[str, Any]:
        state = super().save()
        state.update(sent=[list(s) for s in self.sent], answers=self.answers,
                     deadline=None if self._timer is None else self._timer.deadline)
        return state

    def restore(self, state: dict[str, Any], channel: DeviceChannel | None) -> None:
        super().restore(state, channel)
        self.stop()
        self.sent = [(int(f), int(t)) for f, t in state["sent"]]
        self.answers = int(state["answers"])
        if channel is not None and state["deadline"] is not None:
            self._timer = channel.timer(self._sample, "timesync")
            self._timer.arm(int(state["deadline"]))
