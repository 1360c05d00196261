"""``vm save`` / ``vm start`` of a saved VM through the worker, a kill in the middle of a save,
and checkpoints of a running VM (their saved state applied later)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from hyperv_emu.vmms.saving import HOLD_ENV
from tests.cli_process import cli
from tests.vmms.vm_env import PATIENCE, VmEnv, ticker_expected


def test_saved_and_resumed_prints_what_an_uninterrupted_run_prints(
        vms: VmEnv, tmp_path: Path) -> None:
    vms.run("create", "s", "ticker")
    vms.run("start", "s")
    # Saved wherever it is right after the start (the BIOS or the ticks)...
    assert vms.run("save", "s").stdout.strip() == "VM 's': Saved"
    assert vms.show("s")["state"] == "Saved" and "Saved" in vms.run("list").stdout
    assert "resumed from its saved state" in vms.run("start", "s").stdout
    # ...paused and saved again, then at the console gate (the guest idle in HLT).
    vms.run("pause", "s")
    vms.run("save", "s")
    vms.run("start", "s")
    assert vms.show("s")["state"] == "Running"  # a paused VM's saved state resumes running
    vms.wait_console("s", b"ready> ")
    vms.run("save", "s")
    saved = json.loads((vms.vmdir("s") / "saved.json").read_text())
    assert saved["resumable"] and sorted(p.name for p in vms.vmdir("s").glob("saved-*")) == [
        saved["dir"]]
    vms.run("start", "s")
    assert json.loads((vms.vmdir("s") / "saved.json").read_text())["resumable"] is False
    out = vms.run("console", "s", input=b"F").stdout
    assert "got 46" in out
    vms.wait(lambda: vms.show("s")["state"] == "Off", "the guest to end")
    assert vms.state("s") == "Off (guest wrote 0x0 to the exit port)"
    assert vms.console_log("s") == ticker_expected(tmp_path, b"F")


def test_start_fresh_discards_the_saved_state(vms: VmEnv) -> None:
    vms.run("create", "f", "ticker")
    vms.run("start", "f")
    vms.wait_console("f", b"ready> ")
    vms.run("save", "f")
    assert "started" in vms.run("start", "f", "--fresh").stdout
    vms.wait(lambda: vms.console_log("f").count(b"hyperv-emu BIOS") == 2, "a fresh boot")
    assert not (vms.vmdir("f") / "saved.json").exists()
    assert list(vms.vmdir("f").glob("saved-*")) == []
    vms.run("stop", "f")


def test_kill_9_during_save_leaves_the_previous_saved_state_intact(vms: VmEnv) -> None:
    vms.run("create", "k", "ticker")
    vms.run("start", "k")
    vms.wait_console("k", b"ready> ")
    vms.run("save", "k")
    vmdir = vms.vmdir("k")
    pointer = (vmdir / "saved.json").read_bytes()
    first = json.loads(pointer)["dir"]
    files = {p.name: p.read_bytes() for p in (vmdir / first).iterdir()}
    # The next worker stops in the middle of its save (both files written, not committed).
    vms.run("start", "k", env={HOLD_ENV: "saving"})
    pointer = (vmdir / "saved.json").read_bytes()  # resumed: no longer resumable
    saver = subprocess.Popen(cli("vm", "--store", str(vms.store), "save", "k"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=vms.env)
    try:
        vms.wait(lambda: vms.worker("k")["state"] == "Saving"
                 and any(len(list(p.iterdir())) == 2 for p in vmdir.glob(".saved-*.tmp")),
                 "the save to be under way")
        os.kill(int(vms.worker("k")["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        _, err = saver.communicate(timeout=PATIENCE)
    finally:
        saver.kill()
    assert saver.returncode == 2
    assert "saving VM 'k' failed: worker died: signal 9 (SIGKILL) while Saving" in err
    assert "previous saved state (if any) is unchanged" in err and "Traceback" not in err
    assert vms.state("k") == "Off (worker died: signal 9 (SIGKILL) while Saving)"
    assert (vmdir / "saved.json").read_bytes() == pointer
    assert {p.name: p.read_bytes() for p in (vmdir / first).iterdir()} == files
    # Startable again; the interrupted save's leftovers are cleared away.
    vms.run("start", "k")
    assert list(vmdir.glob(".saved-*")) == []
    assert (vmdir / first).is_dir()
    vms.run("stop", "k")


def test_illegal_while_saving(vms: VmEnv) -> None:
    vms.run("create", "w", "ticker")
    vms.run("checkpoint", "w", "cp")
    vms.run("start", "w", env={HOLD_ENV: "saving"})
    saver = subprocess.Popen(cli("vm", "--store", str(vms.store), "save", "w"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=vms.env)
    try:
        vms.wait(lambda: vms.worker("w")["state"] == "Saving", "the save to be under way")
        for args, text in ((("apply", "w", "cp"), "VM 'w' is Saving: cannot apply it now"),
                           (("delete", "w"), "is Saving"), (("start", "w"), "is Saving")):
            proc = vms.run(*args, check=False)
            assert proc.returncode == 2, proc
            assert text in proc.stderr, proc.stderr
        proc = vms.run("show", "w", "--json")
        assert json.loads(proc.stdout)["state"] == "Saving"
    finally:
        os.kill(int(vms.worker("w")["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        saver.communicate(timeout=PATIENCE)


def test_checkpoint_of_a_running_vm_and_applying_it_later(vms: VmEnv, tmp_path: Path) -> None:
    disk = vms.guest_disk("c")
    vms.run("create", "c", "--disk", str(disk))
    vms.run("start", "c")
    vms.wait_console("c", b"ready> ")
    assert "checkpoint 'gate' taken" in vms.run("checkpoint", "c", "gate").stdout
    data = vms.show("c")
    assert data["state"] == "Running" and data["current_checkpoint"] == "gate"
    assert data["config"]["disks"][0]["path"].endswith(".avhdx")  # type: ignore[index]
    out = vms.run("console", "c", input=b"G").stdout
    assert "got 47" in out and out.rstrip().endswith("PASS")
    vms.wait(lambda: vms.show("c")["state"] == "Off", "the guest to end")
    # Back to the gate: the VM is Saved there and goes on from it.
    assert "Saved" in vms.run("apply", "c", "gate").stdout
    vms.run("start", "c")
    out = vms.run("console", "c", input=b"H").stdout
    assert "got 48" in out
    vms.wait(lambda: vms.show("c")["state"] == "Off", "the guest to end")
    expected = ticker_expected(tmp_path, b"H")
    assert vms.console_log("c").endswith(expected[expected.index(b"ready> ") + 7:])
    assert "checkpoint 'gate' deleted" in vms.run("checkpoint-delete", "c", "gate").stdout
    assert vms.show("c")["config"]["disks"][0]["path"] == str(disk)  # type: ignore[index]


@pytest.mark.parametrize("which", ["saved.vsv", "saved.bin"])
def test_a_damaged_saved_state_is_one_message_and_nothing_changes(
        vms: VmEnv, which: str) -> None:
    vms.run("create", "d", "ticker")
    vms.run("start", "d")
    vms.wait_console("d", b"ready> ")
    vms.run("save", "d")
    vmdir = vms.vmdir("d")
    saved = vmdir / json.loads((vmdir / "saved.json").read_text())["dir"]
    data = bytearray((saved / which).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved / which).write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in [*saved.iterdir(), vmdir / "saved.json",
                                               vmdir / "config.json"]}
    proc = vms.run("start", "d", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "did not start: start failed: cannot resume from the saved state" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert {p.name: p.read_bytes() for p in [*saved.iterdir(), vmdir / "saved.json",
                                             vmdir / "config.json"]} == before
    assert vms.show("d")["state"] == "Saved"
    # --fresh gives up the damaged state and boots.
    vms.run("start", "d", "--fresh")
    vms.wait(lambda: vms.console_log("d").count(b"ready> ") == 2, "a fresh boot")
    vms.run("stop", "d")
