"""Debian's own Hyper-V drivers (hv_vmbus.ko, hv_utils.ko) against the host's VMBus
(worker/vmbus_host.py) with all five integration services.  The busybox /init loads the
modules, lists the channels Linux found under /sys/bus/vmbus/devices, runs a stand-in for
hv_kvp_daemon and waits; the host asks for a shutdown after six answered heartbeats and
hv_utils powers the machine off (no /sbin/poweroff in the initramfs, so orderly_poweroff
forces it).  Slow (about two minutes of host time on a quiet machine) and dependent on Debian
packages, so it runs under the ``linux`` marker and is skipped where those are not
installed."""

from __future__ import annotations

import datetime
import glob
import re
from pathlib import Path

import pytest

from hyperv_emu.vsp.ic import kvp_protocol as K
from hyperv_emu.vsp.ic.ic_protocol import (
    HEARTBEAT_GUID,
    ICTIMESYNCFLAG_SYNC,
    KVP_GUID,
    SHUTDOWN_GUID,
    TIMESYNC_GUID,
    VSS_GUID,
)
from hyperv_emu.worker.machine import Machine, MachineConfig
from hyperv_emu.worker.vmbus_host import VmbusOptions

from .initramfs import BUSYBOX, busybox_initramfs

pytestmark = pytest.mark.linux
KERNELS = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
#: The modules are stored uncompressed by Debian 12 (busybox insmod reads plain ELF).
MODULES = [Path(k.replace("/boot/vmlinuz-", "/lib/modules/")) / "kernel/drivers/hv" / name
           for k in KERNELS[-1:] for name in ("hv_vmbus.ko", "hv_utils.ko")]

# hv_utils negotiates KVP only once a KVP daemon has registered on /dev/vmbus/hv_kvp: until then
# hv_kvp_onchannelcallback returns without reading the host's NEGOTIATE (Linux 6.1
# drivers/hv/hv_kvp.c, "If userspace daemon is not connected ... delay").  kvpd is the smallest
# daemon that speaks the device's protocol (struct hv_kvp_msg, include/uapi/linux/hyperv.h;
# tools/hv/hv_kvp_daemon.c): write a KVP_OP_REGISTER1 (100) record, read the driver's answer,
# then for every host request read one record and write one back whose first word is the status
# the driver reports to the host (kvp_on_msg).  It accepts SETs, answers an ENUMERATE of index 0
# with one key and ends every enumeration at index 1 with HV_S_CONT.  Each write is one
# write(2) of a record at least sizeof(struct hv_kvp_msg) long (dd), and the descriptor stays
# open: closing it resets the driver's state (hvt_op_release).
INIT = """B=/bin/busybox
$B mkdir -p /sys /dev /proc
$B mount -t sysfs sys /sys
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
$B echo "DATE0 $($B date +%s)"
$B insmod /hv_vmbus.ko dyndbg=+p && $B insmod /hv_utils.ko dyndbg=+p && $B echo LOADED
for d in /sys/bus/vmbus/devices/*; do
  $B echo "CHANNEL $($B cat $d/class_id)"
done
$B echo DEVICES $($B ls /dev/vmbus)
kvpd() {
  exec 3<>/dev/vmbus/hv_kvp
  $B dd if=/kvp-register bs=8192 count=1 >&3 2>/dev/null
  $B dd bs=8192 count=1 <&3 of=/dev/null 2>/dev/null
  while $B dd bs=8192 count=1 <&3 of=/req 2>/dev/null; do
    set -- $($B od -An -tu1 -N5 /req)
    key=$($B dd if=/req bs=1 skip=16 count=64 2>/dev/null | $B tr -d '\\000')
    $B echo "KVP-REQUEST op=$1 pool=$2 index=$5 key=$key"
    if [ "$1" = 3 ] && [ "$5" = 0 ]; then r=/kvp-key
    elif [ "$1" = 3 ]; then r=/kvp-end
    else r=/kvp-ok
    fi
    $B dd if=$r bs=8192 count=1 >&3 2>/dev/null
  done
}
kvpd &
$B sleep 1
$B echo "DATE1 $($B date +%s)"
$B dmesg | $B grep hv_
$B sleep 60
$B echo NO-SHUTDOWN
$B poweroff -f
"""
#: What the daemon's records hold: the first word is the status, then struct hv_kvp_msg's body
#: (for ENUMERATE: index, then key and value as UTF-8 the driver turns into UTF-16).
GUEST_KEY, GUEST_VALUE = "BusyboxDaemon", "hyperv-emu test"
KVP_OP_REGISTER1 = 100
RECORD = 8192  # more than sizeof(struct hv_kvp_msg); the driver reads what it needs
#: The RTC shows noon in UTC+05:00, so the host's UTC clock (what timesync sends) reads 07:00
#: while Linux, taking the RTC for UTC, boots five hours ahead.
RTC_BASE = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone(
    datetime.timedelta(hours=5)))
EPOCH_1601 = 11_644_473_600  # seconds from 1601-01-01 (the IC's epoch) to 1970-01-01


def daemon_record(status: int, enum: K.hv_kvp_msg_enumerate | None = None) -> bytes:
    body = bytes(enum) if enum is not None else b""
    return (status.to_bytes(4, "little") + body).ljust(RECORD, b"\0")


def daemon_files() -> list[tuple[str, bytes]]:
    key = K.hv_kvp_msg_enumerate(index=0)
    key.data.value_type = K.REG_SZ
    for field, text in (("key", GUEST_KEY), ("value", GUEST_VALUE)):
        data = text.encode() + b"\0"
        getattr(key.data, field)[:len(data)] = list(data)
    return [("kvp-register", bytes([KVP_OP_REGISTER1]).ljust(RECORD, b"\0")),
            ("kvp-ok", daemon_record(K.HV_S_OK)), ("kvp-end", daemon_record(K.HV_S_CONT)),
            ("kvp-key", daemon_record(K.HV_S_OK, key))]


def value(text: str, name: str) -> int:
    m = re.search(rf"^{name} (\d+)$", text, re.M)
    assert m, text[-3000:]
    return int(m.group(1))


@pytest.mark.skipif(not KERNELS or not BUSYBOX.exists() or not all(p.exists() for p in MODULES),
                    reason="needs linux-image-cloud-amd64 and busybox-static")
def test_linux_binds_the_five_integration_services_and_powers_off_on_request() -> None:
    out = bytearray()
    initrd = busybox_initramfs(
        INIT, files=[(p.name, p.read_bytes()) for p in MODULES] + daemon_files())
    m = Machine(MachineConfig(
        memory_mib=128, kernel=Path(KERNELS[-1]).read_bytes(), initrds=[("initramfs", initrd)],
        append="console=ttyS0 quiet", serial_output=out.extend, rtc_base=RTC_BASE,
        vmbus=VmbusOptions(ics=("heartbeat", "shutdown", "timesync", "kvp", "vss"),
                           shutdown_after_heartbeats=6)))
    vmbus = m.vmbus
    assert vmbus is not None and vmbus.kvp is not None and vmbus.timesync is not None
    # Queued until the guest negotiates VSS.  Without a VSS daemon Linux fails the backup
    # check and answers the disk-information request itself (drivers/hv/hv_snapshot.c
    # vss_handle_request; a FREEZE would reach the missing daemon's transport).
    hot_backup, check = vmbus.request_vss("hot-backup"), vmbus.request_vss("check")
    # About 1.6e9 instructions to the power-off at 19 s of guest time: 4e9 bounds it.
    ex = m.run(max_instructions=4_000_000_000, timeout=900)
    text = out.decode(errors="replace").replace("\r", "")
    assert "LOADED" in text, (ex.message, text[-3000:])

    # All five channels are devices on Linux's bus, and each IC negotiated a version.
    channels = {line.split()[1] for line in text.splitlines() if line.startswith("CHANNEL ")}
    assert channels == {f"{{{g}}}" for g in (HEARTBEAT_GUID, SHUTDOWN_GUID, TIMESYNC_GUID,
                                             KVP_GUID, VSS_GUID)}, text
    for ic in ("Heartbeat", "Shutdown", "TimeSync", "KVP", "VSS"):
        assert re.search(rf"hv_utils: {ic} IC version \d\.\d", text), (ic, text[-3000:])
    assert "DEVICES hv_kvp hv_vss" in text, text[-3000:]  # hvutil_transport char devices

    # KVP end to end: the host's four standard keys reached the daemon through the driver,
    # and the host read the daemon's key from pools 1 and 2.
    requests = re.findall(r"^KVP-REQUEST op=(\d+) pool=(\d+) index=(\d+) key=(.*)$", text, re.M)
    sets = [key for op, pool, _, key in requests
            if (int(op), int(pool)) == (K.KVP_OP_SET, K.KVP_POOL_AUTO_EXTERNAL)]
    assert sets == list(vmbus.kvp.host_keys), requests
    for pool in (K.KVP_POOL_GUEST, K.KVP_POOL_AUTO):
        assert vmbus.guest_kvp(pool) == {GUEST_KEY: GUEST_VALUE}

    assert (hot_backup.status, check.status) == (K.HV_E_FAIL, K.HV_S_OK)
    assert "hv_utils: VSS: Not ready for request." in text  # dyndbg: the reason, from Linux

    # Time: before hv_utils Linux's clock is the RTC's wall time taken as UTC; after it, the
    # host's UTC from the SYNC sample (hv_util.c adj_guesttime -> do_settimeofday64).
    rtc_as_utc = int(RTC_BASE.replace(tzinfo=datetime.timezone.utc).timestamp())
    assert 0 <= value(text, "DATE0") - rtc_as_utc < 60, text[-3000:]
    flags, parenttime = vmbus.timesync.sent[0]
    assert flags == ICTIMESYNCFLAG_SYNC
    synced = parenttime // 10_000_000 - EPOCH_1601
    assert 0 <= synced - int(RTC_BASE.timestamp()) < 60  # the host's UTC: 07:00 and some seconds
    assert 0 <= value(text, "DATE1") - synced < 5, (synced, text[-3000:])

    assert "NO-SHUTDOWN" not in text, text[-3000:]
    assert vmbus.auto_shutdown is not None and vmbus.auto_shutdown.status == K.HV_S_OK
    assert ex.reason == "poweroff" and ex.status == 16, ex.message
