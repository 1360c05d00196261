"""Checkpoints: the seed's snapshot manager.

Taking a checkpoint (the five steps): pause the VM, create a differencing disk (.avhdx, or
.avhd over a VHD) over every writable disk, copy the configuration into the checkpoint,
save the processor and device state and memory into it, and resume on the new differencing
disks.  The disks the VM ran on until then are frozen: each belongs to the checkpoint that
froze it, and checkpoints form a tree (a checkpoint's parent is the one the VM descended
from when it was taken; ``vm.json`` holds the tree, ``checkpoints/CP/`` the files).

Applying a checkpoint discards the current state (its own differencing disks, its saved
state), gives the VM fresh differencing disks over the checkpoint's frozen ones, and its
configuration and saved state.

Deleting a checkpoint removes its record and files, and then collapses the disk tree: a disk
no remaining checkpoint needs whose only child is another differencing disk gets that child
merged into it (Merging Disk; the child's children are re-pointed at it), and one of the VM's
own disks with no child that nothing uses is removed.  A disk with several children is kept.
A merge that would write to disks the running VM has open waits until the VM is off (it is
done by the next checkpoint operation then).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from hyperv_emu.vmms import saving, service, states
from hyperv_emu.vmms.control import request
from hyperv_emu.vmms.store import Store, VmDir, VmmsError, check_name, write_json
from hyperv_emu.worker.config import DiskConfig, VmConfig

_DIFF_EXT = {"vhdx": ".avhdx", "vhd": ".avhd"}


def _entries(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cps = record.get("checkpoints", {})
    if not isinstance(cps, dict):
        raise VmmsError("the VM record's checkpoint list is damaged; nothing was changed")
    return cps


def _cp_config(vm: VmDir, cp: str) -> VmConfig:
    from hyperv_emu.worker.config import ConfigError

    try:
        return VmConfig.load(vm.checkpoints / cp / "config.json")
    except ConfigError as exc:
        raise VmmsError(f"checkpoint {cp!r}: damaged configuration: {exc}") from None


def _parent_of(path: str) -> str | None:
    """The parent disk of a differencing disk (None for any other)."""
    from hyperv_emu.vsp.storage.detect import open_image
    from hyperv_emu.vsp.storage.lock import force_share

    with force_share():
        img = open_image(path, read_only=True)
    try:
        parent = getattr(img, "parent", None)
        return None if parent is None else os.path.abspath(parent.path)
    finally:
        img.close()


def _writable(config: VmConfig) -> list[DiskConfig]:
    return [d for d in config.disks if not d.read_only]


def _new_child(vm: VmDir, parent: str, cp: str) -> str:
    """A new differencing disk over ``parent`` in the VM's disks folder."""
    from hyperv_emu.vsp.storage import convert
    from hyperv_emu.vsp.storage.detect import detect_format

    fmt = detect_format(parent)
    if fmt not in _DIFF_EXT:
        raise VmmsError(f"disk {parent!r} is {fmt}: checkpoints need VHD or VHDX disks "
                        "(convert it with 'hyperv-emu disk convert')")
    vm.disks.mkdir(exist_ok=True)
    stem = re.sub(r"_[0-9a-f]{8}$", "", Path(parent).stem.split("__", 1)[0])
    child = vm.disks / f"{stem}__{cp}_{uuid.uuid4().hex[:8]}{_DIFF_EXT[fmt]}"
    convert.create_image(str(child), None, kind="differencing", parent=parent)
    return str(child)


def _children_over(vm: VmDir, config: VmConfig, cp: str) -> tuple[VmConfig, list[str]]:
    """``config`` with a new differencing disk over each writable disk, and the new files."""
    made: list[str] = []
    disks = []
    try:
        for d in config.disks:
            if d.read_only:
                disks.append(d)
                continue
            made.append(_new_child(vm, d.path, cp))
            disks.append(DiskConfig(made[-1], d.slot, False, False))
    except BaseException:
        for path in made:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return config.replace(disks=tuple(disks)), made


def _copy_saved(src_vsv: Path, src_bin: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src_vsv, directory / saving.VSV)
    shutil.copyfile(src_bin, directory / saving.BIN)


# ---- take ----------------------------------------------------------------------------------
def take(store: Store, name: str, cp: str | None) -> str:
    """Take checkpoint ``cp`` (default: a time stamp) of VM ``name``; returns its name."""
    vm = store.vm(name)
    cp = cp or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    check_name(cp)
    with service.operation(vm, name, "checkpoint", show=states.TAKING_SNAPSHOT) as st:
        record = vm.record()
        entries = _entries(record)
        if cp in entries or (vm.checkpoints / cp).exists():
            raise VmmsError(f"VM {name!r} already has a checkpoint named {cp!r}")
        running = st.state in (states.RUNNING, states.PAUSED)
        if running:
            saving.require()
        else:
            collapse(vm)  # merges that waited for the VM to be off, before reading the disks
        config = service.load_config(vm)
        cpdir = vm.checkpoints / cp
        cpdir.mkdir(parents=True)
        try:
            # 1-2. pause and (running) save the state while the disks are let go of.
            if running:
                request(vm.socket, "checkpoint-save", timeout=None, dir=str(cpdir))
            elif st.state == states.SAVED:
                pair = vm.saved_pair()
                assert pair is not None
                _copy_saved(*pair, cpdir)
            # 3. differencing disks over every writable disk.
            try:
                new_config, made = _children_over(vm, config, cp)
            except BaseException:
                if running:  # back on the disks it had
                    request(vm.socket, "checkpoint-resume", timeout=None, dir=str(cpdir))
                raise
            # 4. the configuration (frozen disks) into the checkpoint, the new one current.
            config.save(cpdir / "config.json")
            new_config.save(vm.config)
        except BaseException:
            shutil.rmtree(cpdir, ignore_errors=True)
            raise
        record["base_disks"] = sorted(set(record.get("base_disks", [])) | {
            d.path for d in _writable(config) if not _ours(vm, d.path)})
        entries[cp] = {"parent": record.get("current_checkpoint"), "created": time.time(),
                       "state": st.state, "has_state": running or st.state == states.SAVED}
        record["checkpoints"] = entries
        record["current_checkpoint"] = cp
        record["operation"] = {"name": states.TAKING_SNAPSHOT, "pid": os.getpid()}
        vm.write_record(record)
        # 5. resume on the new differencing disks.
        if running:
            request(vm.socket, "checkpoint-resume", timeout=None, dir=str(cpdir))
    return cp


# ---- apply ---------------------------------------------------------------------------------
def apply(store: Store, name: str, cp: str) -> str:
    """Return VM ``name`` to checkpoint ``cp``; returns the VM's state after it."""
    vm = store.vm(name)
    with service.operation(vm, name, "apply", show=states.APPLYING_SNAPSHOT):
        record = vm.record()
        entries = _entries(record)
        if cp not in entries:
            raise VmmsError(f"VM {name!r} has no checkpoint named {cp!r} (checkpoints: "
                            f"{', '.join(entries) or 'none'})")
        cp_config = _cp_config(vm, cp)
        current = service.load_config(vm)
        new_config, _made = _children_over(vm, cp_config, cp)
        new_config.replace(name=current.name).save(vm.config)
        cpdir = vm.checkpoints / cp
        if entries[cp].get("has_state"):
            directory = vm.path / f".saved-apply-{os.getpid()}.tmp"
            _copy_saved(cpdir / saving.VSV, cpdir / saving.BIN, directory)
            numbers = [int(p.name[6:]) for p in vm.path.glob("saved-*") if p.name[6:].isdigit()]
            final = vm.path / f"saved-{max(numbers, default=0) + 1}"
            os.replace(directory, final)
            write_json(vm.saved_file, {"dir": final.name, "resumable": True})
            saving.collect_garbage(vm)
            result = states.SAVED
        else:
            saving.discard(vm)
            result = states.OFF
        record["current_checkpoint"] = cp
        vm.write_record(record)
        collapse(vm)  # the discarded state's own disks go
        return result


# ---- delete --------------------------------------------------------------------------------
def delete(store: Store, name: str, cp: str) -> str:
    """Delete checkpoint ``cp`` of VM ``name``; returns what happened to the disks."""
    vm = store.vm(name)
    with service.operation(vm, name, "checkpoint-delete", show=states.DELETING_SNAPSHOT) as st:
        record = vm.record()
        entries = _entries(record)
        if cp not in entries:
            raise VmmsError(f"VM {name!r} has no checkpoint named {cp!r} (checkpoints: "
                            f"{', '.join(entries) or 'none'})")
        _forget(vm, record, cp)
        running = st.state in (states.RUNNING, states.PAUSED)
        merged, removed, waiting = collapse(vm, running=running)
    parts = []
    if merged:
        parts.append(f"merged {merged} differencing disk(s) into their parents")
    if removed:
        parts.append(f"removed {removed} disk file(s)")
    if waiting:
        parts.append(f"{waiting} merge(s) wait until the VM is off")
    return f" ({'; '.join(parts)})" if parts else ""


def _forget(vm: VmDir, record: dict[str, Any], cp: str) -> None:
    """Remove checkpoint ``cp``'s record and files; its children hang from its parent."""
    entries = _entries(record)
    parent = entries[cp].get("parent")
    for entry in entries.values():
        if entry.get("parent") == cp:
            entry["parent"] = parent
    if record.get("current_checkpoint") == cp:
        record["current_checkpoint"] = parent
    del entries[cp]
    record["checkpoints"] = entries
    vm.write_record(record)
    shutil.rmtree(vm.checkpoints / cp, ignore_errors=True)


def delete_all(vm: VmDir) -> None:
    """Delete every checkpoint (``vm delete``): the current data ends up in the disks the VM
    was created with."""
    record = vm.record()
    for cp in list(_entries(record)):
        _forget(vm, record, cp)
    collapse(vm)


# ---- the disk tree -------------------------------------------------------------------------
def _configs(vm: VmDir) -> dict[str, VmConfig]:
    """Every configuration that names disks: "" for the current one, then each checkpoint."""
    out = {"": service.load_config(vm)}
    for cp in _entries(vm.record()):
        out[cp] = _cp_config(vm, cp)
    return out


def _ours(vm: VmDir, path: str) -> bool:
    return Path(path).parent == vm.disks.absolute()


def collapse(vm: VmDir, *, running: bool = False) -> tuple[int, int, int]:
    """Merge and remove what no checkpoint needs (see the module docstring); returns how many
    disks were merged, removed, and left to merge later (running VM)."""
    from hyperv_emu.vsp.storage import convert

    merged = removed = waiting = 0
    base = set(vm.record().get("base_disks", []))
    while True:
        configs = _configs(vm)
        current = {d.path for d in _writable(configs[""])}
        pinned = {d.path for cp, c in configs.items() if cp for d in _writable(c)}
        # Every disk in the tree: what the configurations name, our files, and their parents.
        nodes: set[str] = set(current) | pinned
        if vm.disks.is_dir():
            nodes |= {str(p.absolute()) for p in vm.disks.iterdir() if p.suffix in
                      (".avhdx", ".avhd")}
        parents: dict[str, str | None] = {}
        todo = list(nodes)
        while todo:
            path = todo.pop()
            if path in parents or not os.path.exists(path):
                continue
            parents[path] = _parent_of(path)
            if parents[path] is not None:
                todo.append(parents[path])  # type: ignore[arg-type]
        children: dict[str, list[str]] = {}
        for path, parent in parents.items():
            if parent is not None:
                children.setdefault(parent, []).append(path)
        in_use: set[str] = set()
        if running:
            for path in current:
                p: str | None = path
                while p is not None:
                    in_use.add(p)
                    p = parents.get(p)
        changed = False
        for path in sorted(parents):
            if path in pinned:
                continue
            kids = children.get(path, [])
            if not kids and _ours(vm, path) and path not in current:
                os.unlink(path)
                removed += 1
                changed = True
                break
            # Only into the VM's own disks and the ones it was given (never further up a
            # chain the user built).
            if len(kids) == 1 and (_ours(vm, path) or path in base):
                child = kids[0]
                if path in in_use or child in in_use:
                    waiting += 1
                    continue
                service.set_operation(vm, states.MERGING_DISK)
                convert.merge_image(child)
                for grandchild in children.get(child, []):
                    convert.set_parent(grandchild, path, force=True)
                _repoint(vm, child, path)
                merged += 1
                changed = True
                break
        if not changed:
            return merged, removed, waiting


def _repoint(vm: VmDir, old: str, new: str) -> None:
    """Every configuration naming disk ``old`` names ``new`` instead."""
    def swap(config: VmConfig) -> VmConfig | None:
        if not any(d.path == old for d in config.disks):
            return None
        return config.replace(disks=tuple(
            DiskConfig(new, d.slot, d.read_only, d.force_share) if d.path == old else d
            for d in config.disks))

    for cp, config in _configs(vm).items():
        changed = swap(config)
        if changed is not None:
            changed.save(vm.config if cp == "" else vm.checkpoints / cp / "config.json")


# ---- the tree, for display -----------------------------------------------------------------
def tree(vm: VmDir) -> dict[str, Any]:
    """The checkpoint tree: each checkpoint with its parent, time, state and disks."""
    record = vm.record()
    entries = _entries(record)
    out = []
    for cp, entry in entries.items():
        config = _cp_config(vm, cp)
        out.append({"name": cp, "parent": entry.get("parent"), "created": entry.get("created"),
                    "state": entry.get("state"), "has_state": bool(entry.get("has_state")),
                    "disks": [d.path for d in config.disks]})
    return {"vm": vm.name, "current": record.get("current_checkpoint"), "checkpoints": out}


def render(data: dict[str, Any]) -> list[str]:
    """The tree as indented lines; "Now" marks where the VM's current state hangs."""
    kids: dict[str | None, list[dict[str, Any]]] = {}
    for cp in data["checkpoints"]:
        kids.setdefault(cp["parent"], []).append(cp)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for cp in sorted(kids.get(parent, []), key=lambda c: c["created"] or 0):
            when = datetime.datetime.fromtimestamp(cp["created"] or 0).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(f"{'  ' * depth}{cp['name']}  ({cp['state']}, {when})")
            walk(cp["name"], depth + 1)
            if data["current"] == cp["name"]:
                lines.append(f"{'  ' * (depth + 1)}Now")

    walk(None, 0)
    if data["current"] is None:
        lines.append("Now")
    return lines
