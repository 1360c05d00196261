"""The VMBus options of ``run``/``trace``/``step`` (``--ic``, ``--kvp``,
``--shutdown-after-heartbeats``): parsing into the worker's :class:`VmbusOptions`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from hyperv_emu.worker.vmbus_host import (
    DEFAULT_ICS,
    IC_NAMES,
    VmbusOptionError,
    VmbusOptions,
    parse_ic_list,
    parse_kvp,
)

if TYPE_CHECKING:
    from hyperv_emu.debug.trace import Tracer
    from hyperv_emu.debug.vmbus_trace import VmbusTracer
    from hyperv_emu.worker.machine import Machine


def _ic_list(text: str) -> tuple[str, ...]:
    try:
        return parse_ic_list(text)
    except VmbusOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--ic: ")) from None


def _kvp(text: str) -> tuple[str, str]:
    try:
        return parse_kvp(text)
    except VmbusOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--kvp: ")) from None


def add_vmbus_options(p: argparse.ArgumentParser) -> None:
    """Add the VMBus options to a machine-building subcommand."""
    p.add_argument("--ic", metavar="LIST", type=_ic_list, default=DEFAULT_ICS,
                   help=f"integration services offered on VMBus, comma-separated from "
                        f"{','.join(IC_NAMES)}, or none (default {','.join(DEFAULT_ICS)})")
    p.add_argument("--kvp", metavar="KEY=VALUE", type=_kvp, action="append", default=[],
                   help="a host key for the guest's external KVP pool (pool 0); repeatable; "
                        "needs kvp in --ic")
    from hyperv_emu.cli_parser import _positive_int

    p.add_argument("--shutdown-after-heartbeats", metavar="N", type=_positive_int,
                   help="ask the guest to shut down (shutdown IC) once it has answered N "
                        "heartbeats")


def vmbus_options(args: argparse.Namespace) -> VmbusOptions:
    """The worker's VMBus options from parsed arguments; VmbusOptionError for combinations
    that cannot work."""
    ics = tuple(args.ic)
    if args.kvp and "kvp" not in ics:
        raise VmbusOptionError("--kvp needs the KVP service: add kvp to --ic")
    after = args.shutdown_after_heartbeats
    if after is not None and not {"heartbeat", "shutdown"} <= set(ics):
        raise VmbusOptionError("--shutdown-after-heartbeats needs heartbeat and shutdown "
                               "in --ic")
    if (ics != DEFAULT_ICS or args.kvp or after is not None) and not args.hyperv:
        raise VmbusOptionError("VMBus options need the Hyper-V interface (drop --no-hyperv)")
    return VmbusOptions(ics=ics, kvp=tuple(args.kvp), shutdown_after_heartbeats=after)


def add_trace_option(p: argparse.ArgumentParser) -> None:
    """``trace --vmbus``."""
    p.add_argument("--vmbus", action="store_true",
                   help="trace VMBus channel messages and ring packets, decoded")


def trace_vmbus(machine: Machine, tracer: Tracer, *, as_json: bool) -> VmbusTracer | None:
    """Attach the VMBus tracer to ``machine``'s bus, writing through ``tracer``; None for a
    machine without VMBus."""
    from hyperv_emu.debug.vmbus_trace import VmbusTracer

    if machine.vmbus is None:
        return None
    return VmbusTracer(machine.vmbus.server, tracer.emit, as_json=as_json)
