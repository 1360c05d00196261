"""``hyperv-emu vm``: create, list, show, start, pause, resume, stop, delete and the console,
through the real command and real worker processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hyperv_emu.vmms import service
from hyperv_emu.vmms.store import Store, VmDir
from tests.vmms.vm_env import PATIENCE, VmEnv, ticker_expected


def test_create_start_pause_resume_console_to_the_end(vms: VmEnv, tmp_path: Path) -> None:
    out = vms.run("create", "t1", "ticker", "-m", "16").stdout
    assert "created VM 't1'" in out
    assert vms.show("t1")["state"] == "Off"
    listing = vms.run("list").stdout
    assert "t1" in listing and "Off" in listing and "16 MiB" in listing
    started = vms.run("start", "t1").stdout
    assert "started" in started and "Running" in started
    vms.wait_console("t1", b"ready> ")
    worker = vms.worker("t1")
    assert worker["state"] == "Running" and worker["pid"] != worker["monitor"]
    assert "Running" in vms.run("list").stdout
    assert vms.run("pause", "t1").stdout.strip() == "VM 't1': Paused"
    assert vms.show("t1")["vmms_state"] == "Active"
    assert vms.run("resume", "t1").stdout.strip() == "VM 't1': Running"
    # Not a terminal: standard input goes to COM1, then the output is shown until the end.
    con = vms.run("console", "t1", input=b"A")
    assert b"got 41" in con.stdout.encode()
    assert con.stdout.encode().rstrip().endswith(b"PASS")
    vms.wait(lambda: vms.show("t1")["state"] == "Off", "the VM to end")
    assert vms.state("t1") == "Off (guest wrote 0x0 to the exit port)"
    # What the VM printed over its life is what one uninterrupted run prints.
    assert vms.console_log("t1") == ticker_expected(tmp_path, b"A")
    vms.run("delete", "t1")
    assert not vms.vmdir("t1").exists()
    assert "no VMs" in vms.run("list").stdout


def test_illegal_transitions_are_one_message_and_status_2(vms: VmEnv) -> None:
    vms.run("create", "t2", "ticker")
    for args, text in ((("stop", "t2"), "cannot stop VM 't2' while it is Off"),
                       (("pause", "t2"), "cannot pause VM 't2' while it is Off"),
                       (("console", "t2"), "cannot console VM 't2' while it is Off")):
        proc = vms.run(*args, check=False)
        assert proc.returncode == 2 and text in proc.stderr, proc.stderr
    vms.run("start", "t2")
    before = (vms.vmdir("t2") / "config.json").read_bytes()
    for args, text in ((("start", "t2"), "it is already running"),
                       (("delete", "t2"), "cannot delete VM 't2' while it is Running: stop it "
                                          "first"),
                       (("resume", "t2"), "it is not paused"),
                       (("apply", "t2", "x"), "stop or save it first")):
        proc = vms.run(*args, check=False)
        assert proc.returncode == 2, proc
        assert proc.stderr.count("\n") == 1 and text in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    vms.run("pause", "t2")
    proc = vms.run("pause", "t2", check=False)
    assert proc.returncode == 2 and "already paused" in proc.stderr
    assert (vms.vmdir("t2") / "config.json").read_bytes() == before
    assert vms.show("t2")["state"] == "Paused"
    assert vms.run("stop", "t2").stdout.strip() == "VM 't2': Off"
    assert vms.show("t2")["note"] == ""


def test_bad_names_and_options(vms: VmEnv, tmp_path: Path) -> None:
    for args, text in ((("create", "../x"), "cannot name a VM"),
                       (("create", "a", "--serial-input", "f"), "--serial-input is for 'run'"),
                       (("create", "a", "--disk", str(tmp_path / "none.vhdx")),
                        "does not exist"),
                       (("create", "a", "no-such-guest"), "unknown guest"),
                       (("show", "nobody"), "no VM named 'nobody'")):
        proc = vms.run(*args, check=False)
        assert proc.returncode == 2 and text in proc.stderr, (args, proc.stderr)
    vms.run("create", "a")
    proc = vms.run("create", "a", check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_show_json_and_list_json(vms: VmEnv) -> None:
    vms.run("create", "j", "ticker", "-m", "8", "--clock", "host")
    data = vms.show("j")
    assert data["memory_mib"] == 8 and data["checkpoints"] == 0
    assert data["config"]["clock_mode"] == "host" and data["config"]["guest"] == "ticker"
    listed = json.loads(vms.run("list", "--json").stdout)
    assert [d["name"] for d in listed] == ["j"]


def test_a_guest_reset_request_through_the_control_channel(vms: VmEnv) -> None:
    vms.run("create", "r", "ticker")
    vms.run("start", "r")
    vms.wait_console("r", b"ready> ")
    assert vms.run("reset", "r").stdout.strip() == "VM 'r': Running"
    # After the reset the BIOS runs again and boots the guest a second time.
    vms.wait(lambda: vms.console_log("r").count(b"ready> ") == 2, "the second boot")
    vms.run("stop", "r")


def test_a_guest_that_ends_before_start_looks_again_has_started(
        vms: VmEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    # A short guest can write the exit port between two of `start`'s polls, so the first
    # state `start` sees is Off with the run's end: the VM did start (only a start failure or
    # a crash is an error).  The worker is waited for before the first poll to make that so.
    vms.run("create", "q", "hello")
    real = service.spawn_worker

    def spawn_and_wait(vm: VmDir) -> subprocess.Popen[bytes]:
        proc = real(vm)
        proc.wait(timeout=PATIENCE)
        return proc

    monkeypatch.setattr(service, "spawn_worker", spawn_and_wait)
    st = service.start(Store(vms.store), "q")
    assert st.state == "Off" and st.note == "guest wrote 0x0 to the exit port"
