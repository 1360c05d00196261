"""``hyperv-emu vm``: the management service's commands (create, list, show, start, stop,
vss, ip-info, pause, resume, save, delete, console, checkpoints, the console listener); each
parses its options and calls hyperv_emu.vmms."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperv_emu.vmms.service import VmStatus
    from hyperv_emu.vmms.store import Store
    from hyperv_emu.worker.config import VmConfig

DESCRIPTION = """\
Manage VMs that live in a store directory (--store DIR, else $HYPERV_EMU_STORE, else
$XDG_DATA_HOME/hyperv-emu/vms), each run by its own worker process in the background.

States: Off, Saved, and while a worker runs Running, Paused, Saving, Resetting, Stopping;
while the management service works on a VM: Starting, Taking Snapshot, Applying Snapshot,
Deleting Snapshot, Merging Disk. An operation the state does not allow is refused.

Exit status: 0 done; 2 refused or bad input (one message on standard error, nothing
changed); 130 interrupted (Ctrl-C)."""

#: run's options that describe one run rather than a VM.
_RUN_ONLY = (("serial_input", "--serial-input"), ("serial_input_after", "--serial-input-after"),
             ("max_instructions", "--max-instructions"), ("timeout", "--timeout"),
             ("keys", "--keys"), ("keys_after", "--keys-after"))


def add_vm_commands(sub: Any) -> None:
    """Add the ``vm`` subcommand group to the top-level subparsers ``sub``."""
    from hyperv_emu.cli_parser import _add_machine_options

    vm = sub.add_parser("vm", help="create and run VMs in the background: states, save, "
                        "checkpoints, console", description=DESCRIPTION,
                        formatter_class=argparse.RawTextHelpFormatter)
    vm.add_argument("--store", metavar="DIR", help="the VM store directory")
    vsub = vm.add_subparsers(dest="vm_command", metavar="ACTION", parser_class=type(vm))
    vm.set_defaults(func=lambda _a: _usage(vm))

    p = vsub.add_parser("create", help="a new VM from run's machine options (it stays Off)")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    _add_machine_options(p, serial_default="console")
    p.set_defaults(func=cmd_create)

    p = vsub.add_parser("list", help="a table of the VMs: state, uptime, memory, checkpoints")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = vsub.add_parser("show", help="one VM's state, configuration and files")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = vsub.add_parser("start", help="start the VM's worker (resuming a saved state)")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("--fresh", action="store_true",
                   help="discard a saved state and boot afresh")
    p.set_defaults(func=cmd_start)

    for action, text in (("stop", "shut the guest down through its shutdown service, else turn "
                                  "the VM off (the worker ends, RAM is lost)"),
                         ("pause", "stop running the guest (the worker stays)"),
                         ("resume", "run a paused guest again"),
                         ("reset", "reset the machine (a hardware reset; RAM is kept)"),
                         ("save", "save the VM's state (devices, processors, memory) and end "
                                  "its worker; 'start' continues from it"),
                         ("delete", "remove the VM (checkpoints are merged into its disks "
                                    "first)")):
        p = vsub.add_parser(action, help=text)
        p.add_argument("name", metavar="NAME", help="the VM's name")
        p.set_defaults(func=cmd_simple, action=action)
        if action == "stop":
            _stop_options(p)

    p = vsub.add_parser("vss", help="ask the running guest's VSS (backup) service to freeze, "
                                    "thaw, hot-backup or check (--ic ...,vss)")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("action", choices=("freeze", "thaw", "hot-backup", "check"),
                   help="freeze or thaw the file systems, check a hot backup is possible "
                        "(hot-backup), or ask for the disk information (check)")
    p.set_defaults(func=cmd_vss)

    p = vsub.add_parser("ip-info", help="the IP configuration the running guest reports for "
                                        "one adapter (KVP GET_IP_INFO; --ic ...,kvp)")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("adapter", metavar="MAC", help="the adapter's MAC address")
    p.add_argument("--json", action="store_true", help="as one JSON object")
    p.set_defaults(func=cmd_ip_info)

    p = vsub.add_parser("console", help="the VM's serial console (COM1); Ctrl-] detaches")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("--tcp", action="store_true",
                   help="through the console listener (vm listen) instead of the socket")
    p.add_argument("--port", type=int, default=None,
                   help="the listener's port with --tcp (default 2179)")
    p.add_argument("--read-only", action="store_true", help="watch without typing")
    p.set_defaults(func=cmd_console)

    p = vsub.add_parser("listen", help="serve VM consoles on one localhost TCP port "
                        "(first line from the client: the VM's name)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 2179; 0: any)")
    p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.set_defaults(func=cmd_listen)

    p = vsub.add_parser("checkpoint", help="take a checkpoint: differencing disks over every "
                        "disk, the configuration and the running state")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("checkpoint", metavar="CP", nargs="?", help="its name (default: a time stamp)")
    p.set_defaults(func=cmd_checkpoint)

    p = vsub.add_parser("checkpoints", help="the VM's checkpoint tree")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_checkpoints)

    p = vsub.add_parser("apply", help="return the VM to a checkpoint (the current state is "
                        "discarded)")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("checkpoint", metavar="CP", help="the checkpoint's name")
    p.set_defaults(func=cmd_apply)

    p = vsub.add_parser("checkpoint-delete", help="delete a checkpoint, merging its "
                        "differencing disk into its parent")
    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument("checkpoint", metavar="CP", help="the checkpoint's name")
    p.set_defaults(func=cmd_checkpoint_delete)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


@contextmanager
def _errors() -> Iterator[None]:
    """The service's refusals as the CLI's one-line usage errors (status 2)."""
    from hyperv_emu.cli import UsageError
    from hyperv_emu.vmms.states import IllegalTransition
    from hyperv_emu.vmms.store import VmmsError
    from hyperv_emu.vsp.storage.blockdev import BlockDeviceError
    from hyperv_emu.worker.config import ConfigError

    try:
        yield
    except (VmmsError, IllegalTransition, ConfigError, BlockDeviceError) as exc:
        raise UsageError(str(exc)) from None


def _store(args: argparse.Namespace) -> Store:
    from hyperv_emu.vmms.store import Store

    return Store(Path(args.store) if args.store else None)


def config_from_args(args: argparse.Namespace) -> VmConfig:
    """The VmConfig that run's machine options describe (cli_config.py, as for ``run``), with
    paths made absolute and every file checked to exist now rather than at the first start."""
    from hyperv_emu.cli import UsageError
    from hyperv_emu.cli_config import absolute
    from hyperv_emu.cli_config import config_from_args as machine_config

    for attr, flag in _RUN_ONLY:
        if getattr(args, attr, None) is not None:
            raise UsageError(f"{flag} is for 'run': a VM's input comes from its console "
                             "(vm console NAME)")
    if args.exit_code != "qemu" or args.verbose:
        raise UsageError("--exit-code and --verbose are for 'run' (how a VM ended is shown "
                         "by 'vm show')")
    if args.serial not in ("console", "none"):
        raise UsageError("a VM's COM1 is its console (vm console NAME; the output is also "
                         "kept in console.log): --serial takes console or none here")
    cfg = absolute(machine_config(args))
    files = [("disk image", d.path) for d in cfg.disks]
    files += [("CD image", cfg.cdrom.path)] if cfg.cdrom else []
    files += [("kernel", cfg.kernel)] if cfg.kernel else []
    files += [("initrd", p) for p in cfg.initrds]
    for what, path in files:
        if not Path(path).is_file():
            raise UsageError(f"{what} {path!r} does not exist or is not a file")
    if cfg.guest:
        from hyperv_emu.guests import UnknownGuestError, guest_info

        try:
            guest_info(cfg.guest)
        except UnknownGuestError as exc:
            raise UsageError(str(exc.args[0])) from None
    return cfg


def cmd_create(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import service

    with _errors():
        config = config_from_args(args)
        store = _store(args)
        vm = service.create(store, args.name, config)
    say(f"created VM {args.name!r} in {vm.path} (Off; start it with 'hyperv-emu vm start "
        f"{args.name}')")
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h}:{m:02d}:{s:02d}"


def _statuses(store: Store) -> list[tuple[str, VmStatus | str]]:
    """Each VM's status, or the message saying why it cannot be read."""
    from hyperv_emu.vmms import service
    from hyperv_emu.vmms.store import VmmsError

    out: list[tuple[str, VmStatus | str]] = []
    for name in store.names():
        try:
            out.append((name, service.status(store.vm(name))))
        except VmmsError as exc:
            out.append((name, str(exc)))
    return out


def cmd_list(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say

    with _errors():
        store = _store(args)
        rows = _statuses(store)
    if args.json:
        say(json.dumps([st.to_json() if not isinstance(st, str) else {"name": n, "error": st}
                        for n, st in rows], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"VMs in {store.path}", title_justify="left")
    for col, just in (("Name", "left"), ("State", "left"), ("Uptime", "right"),
                      ("Memory", "right"), ("Checkpoints", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for name, st in rows:
        if isinstance(st, str):
            table.add_row(name, f"damaged: {st}", "-", "-", "-")
        else:
            table.add_row(name, st.shown(), _duration(st.uptime), f"{st.memory_mib} MiB",
                          str(st.checkpoints))
    if not rows:
        say(f"no VMs in {store.path} (create one with 'hyperv-emu vm create NAME')")
        return 0
    Console(width=max(100, _width())).print(table)
    return 0


def _width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def cmd_show(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import service

    with _errors():
        vm = _store(args).vm(args.name)
        st = service.status(vm)
    if args.json:
        say(json.dumps(st.to_json(), indent=2))
        return 0
    cfg = st.config
    rows: list[tuple[str, str]] = [("name", st.name), ("state", st.shown()),
                                   ("VMMS state", st.vmms_state)]
    if st.pid is not None:
        rows += [("worker pid", str(st.pid)), ("uptime", _duration(st.uptime))]
    if cfg is not None:
        rows += [("memory", f"{cfg.memory_mib} MiB"), ("VPs", str(cfg.vps)),
                 ("clock", cfg.clock_mode)]
        if cfg.guest:
            rows.append(("guest", cfg.guest))
        if cfg.kernel:
            rows.append(("kernel", f"{cfg.kernel} {cfg.append}".rstrip()))
        for d in cfg.disks:
            rows.append((f"disk {d.slot}", d.path + (" (read-only)" if d.read_only else "")))
        if cfg.cdrom:
            rows.append(("cdrom", cfg.cdrom.path))
    rows += [("checkpoints", str(st.checkpoints))]
    if st.current_checkpoint:
        rows.append(("current checkpoint", st.current_checkpoint))
    rows += [("directory", str(vm.path)), ("console log", str(vm.console_log))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        say(f"{k:<{width}}  {v}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import service

    with _errors():
        st = service.start(_store(args), args.name, fresh=args.fresh)
    how = "resumed from its saved state" if st.worker.get("resumed") else "started"
    say(f"VM {args.name!r} {how} (worker pid {st.pid}): {st.shown()}")
    return 0


def cmd_simple(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import service

    action: str = args.action
    store = _store(args)
    ops: dict[str, Callable[[], Any]] = {
        "stop": lambda: service.stop(store, args.name, turn_off=args.turn_off,
                                     within=args.timeout),
        "save": lambda: service.save(store, args.name),
        "delete": lambda: service.delete(store, args.name),
    }
    with _errors():
        result = ops.get(action, lambda: service.simple(store, args.name, action))()
    if action == "delete":
        say(f"deleted VM {args.name!r}")
    else:
        say(f"VM {args.name!r}: {result.shown()}")
    return 0


def _stop_options(p: argparse.ArgumentParser) -> None:
    from hyperv_emu.cli_parser import _positive_float
    from hyperv_emu.vmms.ic_requests import STOP_TIMEOUT_S

    p.add_argument("--turn-off", action="store_true",
                   help="turn the VM off at once (no shutdown request to the guest)")
    p.add_argument("--timeout", metavar="SECONDS", type=_positive_float,
                   help=f"virtual seconds the guest has to shut down before it is turned off "
                        f"(default {STOP_TIMEOUT_S:g})")


def cmd_vss(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import service

    with _errors():
        answer = service.vss(_store(args), args.name, args.action)
    flags = answer.get("flags")
    say(f"VM {args.name!r}: VSS {answer.get('operation')} done"
        + (f", flags {flags:#x}" if flags else "")
        + ("; the guest's file systems are frozen" if answer.get("frozen") else ""))
    return 0


def cmd_ip_info(args: argparse.Namespace) -> int:
    from hyperv_emu.vmms import service
    from hyperv_emu.vsp.ic import kvp_protocol as K

    with _errors():
        info = service.ip_info(_store(args), args.name, args.adapter)
    if args.json:
        print(json.dumps(info))
        return 0
    family = {K.ADDR_FAMILY_IPV4: "IPv4", K.ADDR_FAMILY_IPV6: "IPv6"}.get(
        int(info["addr_family"]), "none")
    for label, key in (("adapter", "adapter_id"), ("addresses", "ip_addr"),
                       ("subnets", "sub_net"), ("gateways", "gate_way"), ("dns", "dns_addr")):
        print(f"{label:10} {info[key]}")
    print(f"{'family':10} {family}, DHCP {'on' if info['dhcp_enabled'] else 'off'}")
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from hyperv_emu.vmms import console, service, states

    with _errors():
        store = _store(args)
        if args.tcp:
            store.vm(args.name)
            sock, mode, pending = console.attach_tcp(
                args.name, "127.0.0.1", args.port or console.DEFAULT_PORT, args.read_only)
        else:
            vm = store.vm(args.name)
            states.check("console", args.name, service.status(vm).state)
            sock, mode, pending = console.attach_unix(vm, args.read_only)
    return console.run(sock, mode, pending, f"hyperv-emu: console of VM {args.name!r}")


def cmd_listen(args: argparse.Namespace) -> int:
    from hyperv_emu.vmms import console, listener

    store = _store(args)

    def ready(port: int) -> None:
        print(f"hyperv-emu: console listener on {args.host}:{port} for the VMs in "
              f"{store.path}", file=sys.stderr, flush=True)

    port = console.DEFAULT_PORT if args.port is None else args.port
    with _errors():
        listener.serve(store, args.host, port, ready)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import checkpoints

    with _errors():
        name = checkpoints.take(_store(args), args.name, args.checkpoint)
    say(f"VM {args.name!r}: checkpoint {name!r} taken")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import checkpoints

    with _errors():
        vm = _store(args).vm(args.name)
        tree = checkpoints.tree(vm)
    if args.json:
        say(json.dumps(tree, indent=2))
        return 0
    if not tree["checkpoints"]:
        say(f"VM {args.name!r} has no checkpoints")
        return 0
    for line in checkpoints.render(tree):
        say(line)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import checkpoints

    with _errors():
        state = checkpoints.apply(_store(args), args.name, args.checkpoint)
    say(f"VM {args.name!r}: checkpoint {args.checkpoint!r} applied ({state})")
    return 0


def cmd_checkpoint_delete(args: argparse.Namespace) -> int:
    from hyperv_emu.cli import say
    from hyperv_emu.vmms import checkpoints

    with _errors():
        what = checkpoints.delete(_store(args), args.name, args.checkpoint)
    say(f"VM {args.name!r}: checkpoint {args.checkpoint!r} deleted{what}")
    return 0
