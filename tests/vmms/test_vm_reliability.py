"""What survives what: workers killed with SIGKILL, the service's monitors killed while two
VMs run, two VMs on different disks (and the same disk refused), damaged files."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.vmms.vm_env import VmEnv


def test_a_killed_worker_leaves_its_vm_off_with_the_reason_and_startable(vms: VmEnv) -> None:
    vms.run("create", "k", "ticker")
    vms.run("start", "k")
    vms.wait_console("k", b"ready> ")
    pid = vms.worker("k")["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    vms.wait(lambda: vms.show("k")["state"] == "Off", "the VM to be Off")
    assert vms.state("k") == "Off (worker died: signal 9 (SIGKILL) while Running)"
    assert "worker died: signal 9" in vms.run("list").stdout
    assert not (vms.vmdir("k") / "control.sock").exists() or vms.show("k")["pid"] is None
    # Startable again: a fresh boot.
    vms.run("start", "k")
    vms.wait(lambda: vms.console_log("k").count(b"ready> ") == 2, "the second boot")
    assert vms.show("k")["note"] == ""
    vms.run("stop", "k")


def test_two_vms_on_their_own_disks_survive_the_monitors_and_are_found_again(
        vms: VmEnv) -> None:
    disk_a, disk_b = vms.guest_disk("a"), vms.guest_disk("b")
    vms.run("create", "a", "--disk", str(disk_a))
    vms.run("create", "b", "--disk", str(disk_b))
    # The same disk in a second VM: the first one's write lock refuses it.
    vms.run("create", "c", "--disk", str(disk_a))
    vms.run("start", "a")
    vms.run("start", "b")
    proc = vms.run("start", "c", check=False)
    assert proc.returncode == 2 and "did not start" in proc.stderr and "a.vhdx" in proc.stderr
    assert vms.show("c")["state"] == "Off"
    for name in ("a", "b"):
        vms.wait_console(name, b"ready> ")
    workers = {name: vms.worker(name) for name in ("a", "b")}
    # Kill the service's side of both (the monitors): the workers run on.
    for info in workers.values():
        os.kill(int(info["monitor"]), signal.SIGKILL)  # type: ignore[call-overload]
    for info in workers.values():
        vms.wait(lambda i=info: not _alive(int(i["monitor"])), "a monitor to go")  # type: ignore[call-overload,misc]
    # A new client finds both running, with the same workers, and can drive them.
    listed = {d["name"]: d for d in json.loads(vms.run("list", "--json").stdout)}
    for name in ("a", "b"):
        assert listed[name]["state"] == "Running"
        assert listed[name]["pid"] == workers[name]["pid"]
    vms.run("pause", "a")
    assert vms.show("a")["state"] == "Paused" and vms.show("b")["state"] == "Running"
    con = vms.run("console", "b", input=b"B")
    assert "got 42" in con.stdout
    vms.wait(lambda: vms.show("b")["state"] == "Off", "b to end")
    assert vms.show("a")["state"] == "Paused"
    vms.run("stop", "a")
    assert vms.show("a")["state"] == "Off"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.parametrize("damage", [b"{not json", b"[]", b'{"schema_version": 99}',
                                    b'{"schema_version": 1, "memory_mib": "lots"}'])
def test_a_damaged_configuration_is_one_message_and_nothing_changes(
        vms: VmEnv, damage: bytes) -> None:
    vms.run("create", "d", "ticker")
    config = vms.vmdir("d") / "config.json"
    config.write_bytes(damage)
    before = {p.name: p.read_bytes() for p in vms.vmdir("d").iterdir() if p.is_file()}
    for args in (("start", "d"), ("show", "d"), ("checkpoint", "d", "cp"), ("delete", "d")):
        proc = vms.run(*args, check=False)
        assert proc.returncode == 2, (args, proc)
        assert "damaged configuration" in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") <= 2
    after = {p.name: p.read_bytes() for p in vms.vmdir("d").iterdir() if p.is_file()}
    assert after == before
    assert not (vms.vmdir("d") / "worker.json").exists()
    listing = vms.run("list").stdout
    assert "damaged" in listing


@pytest.mark.parametrize("name", ["vm.json", "worker.json", "saved.json"])
def test_a_damaged_state_file_is_one_message_and_nothing_changes(
        vms: VmEnv, name: str) -> None:
    vms.run("create", "s", "ticker")
    (vms.vmdir("s") / name).write_bytes(b"\x00garbage")
    before = {p.name: p.read_bytes() for p in vms.vmdir("s").iterdir() if p.is_file()}
    for args in (("start", "s"), ("show", "s")):
        proc = vms.run(*args, check=False)
        assert proc.returncode == 2 and "is damaged" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in vms.vmdir("s").iterdir() if p.is_file()} == before
