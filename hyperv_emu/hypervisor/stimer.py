"""Hyper-V synthetic timers: four per VP, programmed through STIMERn_CONFIG/STIMERn_COUNT.

Semantics from TLFS timers.md (HYPERV_FACTS.md section 2):

* CONFIG: bit 0 enable, 1 periodic, 2 lazy, 3 auto-enable, 11:4 APIC vector (direct mode),
  12 direct mode, 19:16 SINTx; 15:13 and 63:20 are RsvdZ (a set bit raises #GP here).
* COUNT, in 100 ns reference-time units: the absolute expiration time of a one-shot timer, the
  period of a periodic one (the first period starts when the timer is enabled).  Writing 0
  disables the timer; with auto-enable, writing a non-zero count enables it.
* An enabled message-mode timer with SINTx = 0 is disabled at once; a one-shot timer disables
  itself when it expires; a one-shot whose count is already past expires immediately.
* On expiry a direct-mode timer asserts its APIC vector; otherwise it sends
  HvMessageTimerExpired (payload: u32 TimerIndex, u32 reserved, u64 ExpirationTime,
  u64 DeliveryTime) through its one dedicated message buffer to SINTx.

Expiries come from a clock timer armed at the exact virtual time the reference counter reaches
the expiration (no polling).  While the timer's message buffer is still queued (the SINT slot
was busy) the timer does not count on; when the message reaches the slot a periodic timer
continues from its last expiration.  A non-lazy timer then fires each missed period in turn (the
TLFS "period modulation" catch-up); a lazy timer skips the periods that already passed (TLFS:
"the timer signal is deferred ... if it doesn't become available until shortly before the next
timer is due to expire, it is skipped entirely").
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from .mmu import GuestFault

if TYPE_CHECKING:
    from .synic import VpSynic

STIMER_COUNT = 4
STIMER_ENABLE = 1 << 0
STIMER_PERIODIC = 1 << 1
STIMER_LAZY = 1 << 2
STIMER_AUTO_ENABLE = 1 << 3
STIMER_VECTOR_SHIFT = 4
STIMER_DIRECT = 1 << 12
STIMER_SINT_SHIFT = 16
#: Every CONFIG bit with a meaning; the rest (15:13, 63:20) is RsvdZ.
STIMER_CONFIG_MASK = 0xF_1FFF
#: HvMessageTimerExpired (TLFS datatypes/hv_message_type.md).
HV_MESSAGE_TIMER_EXPIRED = 0x80000010
_M64 = 0xFFFF_FFFF_FFFF_FFFF


class SyntheticTimer:
    """One synthetic timer of a VP's SynIC."""

    def __init__(self, owner: VpSynic, index: int) -> None:
        self.owner = owner
        self.index = index
        self.config = 0
        self.count = 0
        #: Reference time (100 ns) of the next expiration while armed or waiting for its buffer.
        self.next_ref: int | None = None
        #: Reference time of the expiration whose message is queued (buffer in use), or None.
        self.queued_ref: int | None = None
        clock = owner.clock
        self._timer = clock.timer(self._expired, f"stimer{owner.vp_index}.{index}")

    # ---- register fields -----------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.config & STIMER_ENABLE)

    @property
    def periodic(self) -> bool:
        return bool(self.config & STIMER_PERIODIC)

    @property
    def lazy(self) -> bool:
        return bool(self.config & STIMER_LAZY)

    @property
    def direct(self) -> bool:
        return bool(self.config & STIMER_DIRECT)

    @property
    def sint(self) -> int:
        return (self.config >> STIMER_SINT_SHIFT) & 0xF

    @property
    def vector(self) -> int:
        return (self.config >> STIMER_VECTOR_SHIFT) & 0xFF

    @property
    def deadline_ns(self) -> int | None:
        """Absolute virtual time the clock timer is armed for (None when not armed)."""
        return self._timer.deadline

    # ---- MSR writes ----------------------------------------------------------------------
    def write_config(self, value: int) -> None:
        """STIMERn_CONFIG write (GuestFault #GP for RsvdZ bits or a direct vector < 16)."""
        if value & ~STIMER_CONFIG_MASK & _M64 or value >> 64:
            raise GuestFault(13, 0)
        if value & STIMER_DIRECT and (value >> STIMER_VECTOR_SHIFT) & 0xFF < 16:
            raise GuestFault(13, 0)  # APIC vectors 0-15 are illegal (as for SINTx)
        self.config = value
        if self.enabled and not self.direct and self.sint == 0:
            # TLFS: SINTx = 0 is not permitted for an enabled message timer; it is disabled.
            self.config &= ~STIMER_ENABLE
        if self.enabled:
            # Enabling starts the first period.  Rewriting an enabled timer's config is
            # undefined (TLFS); it restarts here.
            self._start()
        else:
            self._stop()

    def write_count(self, value: int) -> None:
        """STIMERn_COUNT write: 0 disables; auto-enable turns the timer on with a count."""
        self.count = value & _M64
        if self.count == 0:
            self.config &= ~STIMER_ENABLE
            self._stop()
            return
        if self.config & STIMER_AUTO_ENABLE and (self.direct or self.sint != 0):
            self.config |= STIMER_ENABLE
        if self.enabled:
            self._start()

    # ---- arming ---------------------------------------------------------------------------
    def _stop(self) -> None:
        self._timer.cancel()
        self.next_ref = None

    def _start(self) -> None:
        """Begin counting: one-shot to the absolute count, periodic one period from now."""
        self._timer.cancel()
        if self.count == 0:
            self.next_ref = None  # enabled without a count: nothing to wait for yet
            return
        now = self.owner.ref_time()
        self._arm(now + self.count if self.periodic else self.count)

    def _arm(self, ref: int) -> None:
        self.next_ref = ref
        if self.queued_ref is not None and not self.direct:
            return  # the buffer is in use: wait for its message to reach the slot
        clock = self.owner.clock
        self._timer.arm(max(clock.now(), self.owner.ref_to_ns(ref)))

    # ---- expiry ---------------------------------------------------------------------------
    def _expired(self) -> None:
        if not self.enabled or self.next_ref is None:
            return
        exp = self.next_ref
        if self.direct:
            self.owner.timer_interrupt(self)
            self._after_signal(exp)
            return
        if self.queued_ref is not None:
            return  # cannot happen (not armed while queued); keep the deadline pending
        self.queued_ref = exp
        if not self.periodic:
            self.config &= ~STIMER_ENABLE  # one-shot timers disable themselves on expiry
            self.next_ref = None
        self.owner.queue_timer_message(self)

    def message_payload(self, delivery_ref: int) -> bytes:
        """HV_TIMER_MESSAGE_PAYLOAD of the queued expiration, delivered at ``delivery_ref``."""
        exp = self.queued_ref if self.queued_ref is not None else delivery_ref
        return struct.pack("<IIQQ", self.index, 0, exp & _M64, delivery_ref & _M64)

    def message_delivered(self) -> None:
        """The queued timer message reached the SIM slot: the buffer is free again."""
        exp = self.queued_ref
        self.queued_ref = None
        if exp is not None and self.enabled and self.periodic:
            self._after_signal(exp)

    def message_dropped(self) -> None:
        """The queued message was discarded (SynIC reset): just free the buffer."""
        self.queued_ref = None

    def _after_signal(self, exp: int) -> None:
        """Schedule the next period after the expiration at ``exp`` was signalled."""
        if not self.periodic:
            self.config &= ~STIMER_ENABLE
            self.next_ref = None
            return
        nxt = exp + self.count
        now = self.owner.ref_time()
        if self.lazy and nxt <= now:
            # Lazy: periods that already passed are skipped, not caught up.
            nxt = exp + self.count * ((now - exp) // self.count + 1)
        self._arm(nxt)

    # ---- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """VP reset: CONFIG and COUNT are 0 (TLFS), nothing armed or queued."""
        self.config = 0
        self.count = 0
        self.queued_ref = None
        self._stop()

    def save(self) -> dict[str, Any]:
        return {"config": self.config, "count": self.count, "next_ref": self.next_ref,
                "queued_ref": self.queued_ref, "deadline": self._timer.deadline}

    def restore(self, state: dict[str, Any]) -> None:
        self.config = int(state["config"])
        self.count = int(state["count"])
        self.next_ref = None if state["next_ref"] is None else int(state["next_ref"])
        self.queued_ref = None if state["queued_ref"] is None else int(state["queued_ref"])
        if state["deadline"] is None:
            self._timer.cancel()
        else:
            self._timer.arm(int(state["deadline"]))
