"""``vm stop`` through the shutdown IC, ``vm vss`` and ``vm ip-info``, through the real
command and real worker processes (vmms/ic_requests.py): the assembly VSC guest
(guests/vmbus.S) shuts down when asked and its VM ends Off; a guest that never opens the
shutdown IC, or ``--turn-off``, is turned off at once; a VSS or KVP request nobody answers
ends after its virtual-time bound."""

from __future__ import annotations

from tests.vmms.vm_env import VmEnv


def _vmbus_vm(vms: VmEnv, name: str, *ics: str) -> None:
    # Its own shutdown request only after 10^9 heartbeats (a heartbeat a virtual second, and
    # a halted guest's virtual time runs far ahead of the host's): the stop does the asking.
    vms.run("create", name, "vmbus", "-m", "8", "--shutdown-after-heartbeats", str(10**9),
            *(("--ic", ",".join(ics)) if ics else ()))
    vms.run("start", name)
    vms.wait_console(name, b"channels open")


def test_stop_asks_the_guest_through_the_shutdown_ic(vms: VmEnv) -> None:
    _vmbus_vm(vms, "g")
    assert vms.run("stop", "g").stdout.strip().startswith("VM 'g': Off")
    log = vms.console_log("g")
    # The guest got the request (flags 0: shut down), answered it and ended its run itself.
    assert b"shutdown flags: 00000000" in log and log.rstrip().endswith(b"PASS"), log
    assert "turned off" not in vms.state("g")


def test_a_guest_without_the_shutdown_ic_open_is_turned_off(vms: VmEnv) -> None:
    vms.run("create", "t", "ticker", "-m", "16")
    vms.run("start", "t")
    vms.wait_console("t", b"ready> ")
    vms.run("stop", "t")
    assert vms.state("t") == ("Off (turned off: the guest has not opened the shutdown "
                              "integration service)")
    _vmbus_vm(vms, "g")
    vms.run("stop", "g", "--turn-off")
    assert vms.state("g") == "Off" and b"shutdown flags" not in vms.console_log("g")


def test_vss_and_ip_info_requests_and_their_errors(vms: VmEnv) -> None:
    _vmbus_vm(vms, "g", "heartbeat", "shutdown", "vss")
    # The assembly guest never opens the VSS channel: the request waits 10 virtual seconds.
    proc = vms.run("vss", "g", "freeze", check=False)
    assert proc.returncode == 2 and "no answer to VSS FREEZE within 10 s" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = vms.run("ip-info", "g", "00:15:5D:00:00:01", check=False)
    assert proc.returncode == 2 and "no KVP integration service" in proc.stderr
    vms.run("stop", "g")
    _vmbus_vm(vms, "k", "heartbeat", "shutdown", "kvp")
    proc = vms.run("ip-info", "k", "00:15:5D:00:00:01", check=False)
    assert proc.returncode == 2 and "no answer to GET_IP_INFO within 10 s" in proc.stderr
    vms.run("stop", "k")
    _vmbus_vm(vms, "h")
    proc = vms.run("vss", "h", "thaw", check=False)
    assert proc.returncode == 2 and "no VSS integration service" in proc.stderr
    vms.run("pause", "h")
    proc = vms.run("vss", "h", "check", check=False)
    assert proc.returncode == 2 and "cannot vss VM 'h' while it is Paused" in proc.stderr
    proc = vms.run("stop", "h", "--timeout", "0", check=False)
    assert proc.returncode == 2
    vms.run("stop", "h")  # paused: turned off at once, as before
    assert vms.state("h") == "Off"
