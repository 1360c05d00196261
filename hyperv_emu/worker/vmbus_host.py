"""The worker's VMBus side: the channel manager on the root partition's SynIC ports of a VM
(vmbus/server.py: message connections 1 and 4, the shared event connection 2, one event port
per channel; HYPERV_FACTS 5.1) with the integration components the user chose.

:class:`VmbusOptions` is the pure-data part of the VM configuration (``--ic``, ``--kvp``,
``--shutdown-after-heartbeats``); :class:`VmbusHost` builds the devices in a fixed order (so
relids are the same on every run and after a restore), owns the server, and is what the
management side calls on a running VM: :meth:`VmbusHost.request_shutdown`, the heartbeat's
health, the guest's KVP pools, :meth:`VmbusHost.request_vss`.  All bus work runs as the
partition's deferred work (hypervisor/deferred.py), between slices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyperv_emu.vmbus.server import VmbusServer
from hyperv_emu.vsp.framework import VmbusDevice
from hyperv_emu.vsp.ic import kvp_protocol as K
from hyperv_emu.vsp.ic.heartbeat import NO_CONTACT, Heartbeat
from hyperv_emu.vsp.ic.kvp import Kvp, KvpRequest
from hyperv_emu.vsp.ic.shutdown import KINDS, Shutdown, ShutdownRequest
from hyperv_emu.vsp.ic.timesync import Timesync, filetime_of
from hyperv_emu.vsp.ic.vss import Vss, VssRequest
from hyperv_emu.worker.config import DEFAULT_ICS as DEFAULT_ICS  # re-exported for the CLI
from hyperv_emu.worker.config import KNOWN_ICS, VmConfig

if TYPE_CHECKING:
    from hyperv_emu.worker.machine import Machine

#: Every IC this host offers, in offer (relid) order; what a VM offers unless ``--ic`` says
#: otherwise (the configuration's lists, worker/config.py).
IC_NAMES = KNOWN_ICS


class VmbusOptionError(ValueError):
    """A VMBus option the user gave cannot be used; the message is for the user."""


def parse_ic_list(text: str) -> tuple[str, ...]:
    """``--ic`` LIST: comma-separated IC names, or ``none``; returned in offer order."""
    words = [w.strip().lower() for w in text.split(",")]
    if words == ["none"]:
        return ()
    unknown = [w for w in words if w not in IC_NAMES]
    if unknown or not all(words):
        bad = ", ".join(repr(w) for w in unknown) or "an empty name"
        raise VmbusOptionError(f"--ic: {bad} is not an integration service (known: "
                               f"{', '.join(IC_NAMES)}, or none)")
    if len(set(words)) != len(words):
        raise VmbusOptionError("--ic: a service is named twice")
    return tuple(n for n in IC_NAMES if n in words)


def parse_kvp(text: str) -> tuple[str, str]:
    """``--kvp`` KEY=VALUE: one host key for the guest's external pool (pool 0)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise VmbusOptionError(f"--kvp: expected KEY=VALUE, not {text!r}")
    try:
        K.check_key_value(key, value)
    except ValueError as exc:
        raise VmbusOptionError(f"--kvp {key}: {exc}") from None
    return key, value


@dataclass
class VmbusOptions:
    """What the user chose for the VM's VMBus (pure data, part of MachineConfig)."""

    ics: tuple[str, ...] = DEFAULT_ICS
    #: Host keys for the guest's external KVP pool (``--kvp KEY=VALUE``), in order.
    kvp: Sequence[tuple[str, str]] = ()
    #: The VM's name, as KVP's VirtualMachineName reports it.
    vm_name: str = "hyperv-emu"
    #: Ask the guest to shut down once it has answered this many heartbeats.
    shutdown_after_heartbeats: int | None = None
    #: KVP host keys the standard four are built from (None: this host's name).
    host_name: str | None = None


def options_of(cfg: VmConfig) -> VmbusOptions:
    """The VMBus choices a VM configuration makes."""
    return VmbusOptions(ics=cfg.ics, kvp=cfg.kvp, vm_name=cfg.name or "hyperv-emu",
                        shutdown_after_heartbeats=cfg.shutdown_after_heartbeats)


class VmbusHost:
    """A VM's VMBus: the server and its IC devices (see the module docstring)."""

    def __init__(self, machine: Machine, opts: VmbusOptions) -> None:
        if machine.root is None or machine.hv is None:
            raise ValueError("VMBus needs the Hyper-V interface")
        self.options = opts
        self.ics = tuple(n for n in IC_NAMES if n in opts.ics)
        self.heartbeat: Heartbeat | None = None
        self.shutdown: Shutdown | None = None
        self.timesync: Timesync | None = None
        self.kvp: Kvp | None = None
        self.vss: Vss | None = None
        base = machine.config.effective_rtc_base()
        clock = machine.clock
        hv = machine.hv
        # Host time for timesync: the UTC instant of the RTC's base plus virtual time, so a
        # deterministic run hands the guest the same times every run.  A base with a zone
        # makes the RTC show local time while timesync sends UTC, as on a Hyper-V host
        # outside UTC: Linux boots with the RTC's reading as UTC and hv_utils corrects it.
        origin = filetime_of(base)
        self.host_time: Callable[[], int] = lambda: origin + clock.now() // 100
        devices: list[VmbusDevice] = []
        for name in self.ics:
            if name == "heartbeat":
                self.heartbeat = Heartbeat()
                self.heartbeat.on_answer = self._heartbeat_answered
                devices.append(self.heartbeat)
            elif name == "shutdown":
                self.shutdown = Shutdown()
                devices.append(self.shutdown)
            elif name == "timesync":
                self.timesync = Timesync(self.host_time, hv.msrs.time_ref_count)
                devices.append(self.timesync)
            elif name == "kvp":
                self.kvp = Kvp(host_keys=K.standard_host_keys(opts.vm_name, opts.host_name),
                               external=dict(opts.kvp))
                devices.append(self.kvp)
            elif name == "vss":
                self.vss = Vss()
                devices.append(self.vss)
        self.server = VmbusServer(machine.root, hv, devices)
        self.shutdown_after = opts.shutdown_after_heartbeats
        #: The shutdown request :attr:`shutdown_after` triggered, once it has.
        self.auto_shutdown: ShutdownRequest | None = None

    # ---- host actions on a running VM ---------------------------------------------------------
    def request_shutdown(self, kind: str = "shutdown", *, force: bool = False,
                         message: str = "") -> ShutdownRequest | None:
        """Ask the guest to shut down, reboot or hibernate through the shutdown IC; None
        while the guest has not opened and negotiated it.  ValueError for an unknown kind
        or a VM without the shutdown IC.  Call it between runs or from the run loop's thread
        (a timer or event callback): the message goes out as the partition's deferred work.
        The guest's answer lands in the returned request's ``status``."""
        if kind not in KINDS:
            raise ValueError(f"unknown shutdown kind {kind!r} (known: {', '.join(KINDS)})")
        if self.shutdown is None:
            raise ValueError("this VM has no shutdown integration service (--ic)")
        return self.shutdown.ask(kind, force=force, message=message)

    @property
    def heartbeat_health(self) -> str:
        """The heartbeat IC's view of the guest: no-contact, ok or lost."""
        return self.heartbeat.health if self.heartbeat is not None else NO_CONTACT

    def guest_kvp(self, pool: int) -> dict[str, str]:
        """What the guest reported of KVP pool ``pool`` at the last enumeration."""
        if self.kvp is None:
            raise ValueError("this VM has no KVP integration service (--ic)")
        return dict(self.kvp.guest_pools.get(pool, {}))

    def guest_ip_info(self, adapter_id: str) -> KvpRequest:
        """Ask the guest, through KVP's GET_IP_INFO, for the IP configuration of the adapter
        with MAC address ``adapter_id``; the answer lands in the request's ``ip`` (status
        HV_E_FAIL: the guest has no such adapter).  ValueError for a VM without KVP."""
        if self.kvp is None:
            raise ValueError("this VM has no KVP integration service (--ic)")
        return self.kvp.get_ip_info(adapter_id)

    def request_vss(self, action: str) -> VssRequest:
        """Ask the guest's VSS IC to freeze, thaw, hot-backup (check it can take a backup) or
        check (its disk information).  Queued until the guest has opened and negotiated the
        IC; the answer lands in the request's ``status`` and ``flags``.  ValueError for an
        unknown action or a VM without the VSS IC.  Call it as :meth:`request_shutdown`."""
        if self.vss is None:
            raise ValueError("this VM has no VSS integration service (--ic)")
        return self.vss.ask(action)

    def _heartbeat_answered(self) -> None:
        hb = self.heartbeat
        if (hb is None or self.shutdown_after is None or self.auto_shutdown is not None
                or hb.answers < self.shutdown_after):
            return
        if self.shutdown is not None:
            self.auto_shutdown = self.shutdown.ask(
                "shutdown", message=f"after {hb.answers} heartbeats")

    # ---- machine life cycle -------------------------------------------------------------------
    def reset(self) -> None:
        """Machine reset: the bus forgets the guest that connected."""
        self.server.reset()
        self.auto_shutdown = None

    def save(self) -> dict[str, Any]:
        """Versioned state of the whole bus (the server saves each device's state)."""
        return {"device": "vmbus-host", "version": 1, "ics": list(self.ics),
                "server": self.server.save(),
                "auto_shutdown": self.auto_shutdown is not None}

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`save` output into a host built with the same ``--ic`` choice.  Restore
        guest RAM and the hypervisor (SynIC) state first: open channels map their rings from
        guest memory again and reconnect their event ports."""
        if state.get("device") != "vmbus-host" or state.get("version") != 1:
            raise ValueError("not a version-1 VMBus host state")
        if tuple(state["ics"]) != self.ics:
            raise ValueError(f"the saved VM offers the ICs {','.join(state['ics']) or 'none'},"
                             f" this one {','.join(self.ics) or 'none'}")
        self.server.restore(state["server"])
        if state["auto_shutdown"] and self.shutdown is not None and self.shutdown.requests:
            self.auto_shutdown = self.shutdown.requests[0]
