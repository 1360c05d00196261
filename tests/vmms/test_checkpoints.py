"""Checkpoints of a VM that is off: a tree three deep, applied and deleted in every order, each
checkpoint keeping its data, every disk file checking clean, and in the end the data merged
back into the disk the VM was created with."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from hyperv_emu.vmms import checkpoints, service
from hyperv_emu.vmms.store import Store, VmDir, VmmsError
from hyperv_emu.vsp.storage import convert
from hyperv_emu.vsp.storage.detect import open_image
from hyperv_emu.worker.config import DiskConfig, VmConfig
from tests.cli_process import cli, cli_env
from tests.vmms.vm_env import VmEnv

CPS = ("cp1", "cp2", "cp3")


def _write(path: str, text: bytes) -> None:
    with open_image(path) as img:
        img.write(0, text.ljust(512, b"\0"))


def _read(path: str) -> bytes:
    with open_image(path, read_only=True) as img:
        return img.read(0, 512).rstrip(b"\0")


def _current(vm: VmDir) -> str:
    return service.load_config(vm).disks[0].path


def _all_files(vm: VmDir, base: Path) -> list[str]:
    return [str(base)] + sorted(str(p) for p in vm.disks.glob("*")) if vm.disks.is_dir() else [
        str(base)]


def _tree(tmp: Path) -> tuple[Store, VmDir, Path, dict[str, bytes]]:
    """VM "v" on a VHDX with cp1 -> cp2 -> cp3 -> now, each holding its own sector 0."""
    base = tmp / "base.vhdx"
    convert.create_image(str(base), 1 << 20, kind="dynamic")
    store = Store(tmp / "store")
    vm = service.create(store, "v", VmConfig(disks=(DiskConfig(str(base), 0),)))
    at: dict[str, bytes] = {}
    for i, cp in enumerate(CPS):
        _write(_current(vm), b"S%d" % i)
        at[cp] = b"S%d" % i
        checkpoints.take(store, "v", cp)
    _write(_current(vm), b"S3")
    return store, vm, base, at


def test_take_makes_differencing_disks_and_keeps_each_checkpoints_data(tmp_path: Path) -> None:
    store, vm, base, at = _tree(tmp_path)
    tree = checkpoints.tree(vm)
    assert tree["current"] == "cp3"
    assert [(c["name"], c["parent"]) for c in tree["checkpoints"]] == [
        ("cp1", None), ("cp2", "cp1"), ("cp3", "cp2")]
    assert checkpoints.render(tree)[-1].strip() == "Now"
    cur = _current(vm)
    assert cur.endswith(".avhdx") and Path(cur).parent == vm.disks
    # The chain: now -> cp3's disk -> cp2's -> cp1's (the base).
    assert convert.image_info(cur)["chain"][-1] == str(base)
    assert len(convert.image_info(cur)["chain"]) == 4
    for c in tree["checkpoints"]:
        assert _read(c["disks"][0]) == at[c["name"]]
    assert _read(cur) == b"S3"
    with pytest.raises(VmmsError, match="already has a checkpoint named 'cp2'"):
        checkpoints.take(store, "v", "cp2")


@pytest.mark.parametrize("order", list(itertools.permutations(CPS)),
                         ids=lambda o: "-".join(o))
def test_a_tree_three_deep_applied_and_deleted_in_every_order(
        tmp_path: Path, order: tuple[str, ...]) -> None:
    store, vm, base, at = _tree(tmp_path)
    for cp in order:
        assert checkpoints.apply(store, "v", cp) == "Off"
        assert _read(_current(vm)) == at[cp]
        assert checkpoints.tree(vm)["current"] == cp
        _write(_current(vm), b"X-" + cp.encode())  # the branch goes its own way
    now = b"X-" + order[-1].encode()
    remaining = list(CPS)
    for cp in order:
        checkpoints.delete(store, "v", cp)
        remaining.remove(cp)
        assert not (vm.checkpoints / cp).exists()
        assert _read(_current(vm)) == now
        for c in checkpoints.tree(vm)["checkpoints"]:
            assert _read(c["disks"][0]) == at[c["name"]], (cp, c["name"])
        assert sorted(c["name"] for c in checkpoints.tree(vm)["checkpoints"]) == remaining
        for path in _all_files(vm, base):
            assert convert.check_image(path) == [], path
    # Nothing left to keep apart: the data is back in the base disk, no .avhdx remains.
    assert _current(vm) == str(base)
    assert list(vm.disks.glob("*")) == []
    assert _read(str(base)) == now
    assert checkpoints.tree(vm) == {"vm": "v", "current": None, "checkpoints": []}


def test_deleting_the_vm_merges_its_checkpoints_into_its_disk(tmp_path: Path) -> None:
    store, vm, base, _at = _tree(tmp_path)
    service.delete(store, "v")
    assert not vm.path.exists()
    assert _read(str(base)) == b"S3"
    assert convert.check_image(str(base)) == []


def test_a_raw_disk_cannot_be_checkpointed_and_nothing_changes(tmp_path: Path) -> None:
    raw = tmp_path / "disk.img"
    raw.write_bytes(bytes(1 << 20))
    store = Store(tmp_path / "store")
    vm = service.create(store, "r", VmConfig(disks=(DiskConfig(str(raw), 0),)))
    before = vm.config.read_bytes()
    with pytest.raises(VmmsError, match="checkpoints need VHD or VHDX disks"):
        checkpoints.take(store, "r", "cp")
    assert vm.config.read_bytes() == before
    assert checkpoints.tree(vm)["checkpoints"] == []
    assert not (vm.checkpoints / "cp").exists()


def test_checkpoint_commands_and_disk_check_on_every_file(vms: VmEnv) -> None:
    disk = vms.guest_disk("g", "hello")
    vms.run("create", "g", "--disk", str(disk))
    for cp in CPS:
        assert f"checkpoint {cp!r} taken" in vms.run("checkpoint", "g", cp).stdout
    tree = vms.run("checkpoints", "g").stdout.splitlines()
    assert [line.strip().split()[0] for line in tree] == ["cp1", "cp2", "cp3", "Now"]
    assert [len(line) - len(line.lstrip()) for line in tree] == [0, 2, 4, 6]
    assert "Off" in vms.run("apply", "g", "cp2").stdout
    vms.run("start", "g")
    vms.wait(lambda: vms.show("g")["state"] == "Off", "the guest to end")
    assert vms.console_log("g").rstrip().endswith(b"PASS")
    out = vms.run("checkpoint-delete", "g", "cp1").stdout
    assert "merged" in out or "removed" in out or "deleted" in out
    vms.run("checkpoint-delete", "g", "cp3")
    vms.run("checkpoint-delete", "g", "cp2")
    assert "no checkpoints" in vms.run("checkpoints", "g").stdout
    files = [disk, *(vms.vmdir("g") / "disks").glob("*")]
    for path in files:
        proc = subprocess.run(cli("disk", "check", str(path)), capture_output=True, text=True,
                              env=cli_env())
        assert proc.returncode == 0 and "no problems found" in proc.stdout, proc
    proc = vms.run("checkpoint-delete", "g", "cp2", check=False)
    assert proc.returncode == 2 and "no checkpoint named 'cp2'" in proc.stderr


def test_a_merge_deferred_while_running_is_done_by_the_next_checkpoint(vms: VmEnv) -> None:
    disk = vms.guest_disk("m")
    vms.run("create", "m", "--disk", str(disk))
    vms.run("start", "m")
    vms.run("checkpoint", "m", "one")
    out = vms.run("checkpoint-delete", "m", "one").stdout
    assert "1 merge(s) wait until the VM is off" in out
    assert vms.show("m")["state"] == "Running"
    vms.run("stop", "m")
    # The next checkpoint operation merges first, then builds on what the VM now runs on.
    vms.run("checkpoint", "m", "two")
    current = vms.show("m")["config"]["disks"][0]["path"]  # type: ignore[index]
    assert convert.image_info(current)["chain"] == [current, str(disk)]
    assert "merged 1 differencing disk" in vms.run("checkpoint-delete", "m", "two").stdout
    assert vms.show("m")["config"]["disks"][0]["path"] == str(disk)  # type: ignore[index]
    assert list((vms.vmdir("m") / "disks").glob("*")) == []
    assert convert.check_image(str(disk)) == []
