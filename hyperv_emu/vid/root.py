"""RootPartition and ChildHandle: typed wrappers that build hypercall inputs (struct layouts
of HYPERV_FACTS.md 3.7) and issue them as the root partition through
:meth:`HypercallTable.dispatch`, continuing rep calls until every element is done."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from hyperv_emu.clock import VirtualClock
from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.hv import Hypervisor, PartitionHv
from hyperv_emu.hypervisor.hypercall import BytesIo, encode_control
from hyperv_emu.hypervisor.memory import PAGE, page_run_bytes
from hyperv_emu.hypervisor.partition import Partition
from hyperv_emu.hypervisor.synic import PORT_MESSAGE_BUFFERS, HostEvent, HostMessage
from hyperv_emu.hypervisor.vp import VirtualProcessor

# Re-exported for host code: what a root partition's ports receive, how many messages a port
# buffers, and the hypervisor's per-partition state a ChildHandle hands out.
__all__ = ["PORT_MESSAGE_BUFFERS", "ChildHandle", "HostEvent", "HostMessage", "HypercallError",
           "PartitionHv", "RootPartition"]

#: Rep elements per call: a memory-form input block must fit one page.
_MAP_BATCH = (PAGE - 24) // 8
_ALL_ACCESS = (H.HV_MAP_GPA_READABLE | H.HV_MAP_GPA_WRITABLE | H.HV_MAP_GPA_KERNEL_EXECUTABLE
               | H.HV_MAP_GPA_USER_EXECUTABLE)


class HypercallError(Exception):
    """A hypercall the root made failed; ``status`` is the HV_STATUS value."""

    def __init__(self, code: int, status: int, reps: int = 0) -> None:
        super().__init__(f"HvCall{H.call_name(code)} failed: HV_STATUS_{H.status_name(status)}"
                         + (f" after {reps} reps" if reps else ""))
        self.code = code
        self.status = status
        self.reps = reps


class RootPartition:
    """The root (parent) partition: its code is this Python process."""

    def __init__(self, hypervisor: Hypervisor | None = None,
                 clock: VirtualClock | None = None) -> None:
        if hypervisor is None:
            hypervisor = Hypervisor(clock or VirtualClock())
        self.hypervisor = hypervisor
        self.hv: PartitionHv = hypervisor.add_partition(None, root=True)

    @property
    def id(self) -> int:
        return self.hv.id

    # ---- raw hypercalls ------------------------------------------------------------------
    def hypercall(self, code: int, data: bytes = b"", *, rep_count: int = 0,
                  var_header_qwords: int = 0, check: bool = True) -> tuple[int, int, bytes]:
        """Issue one memory-form hypercall as the root; returns (status, reps completed,
        output page).  Rep calls are re-issued from the new rep start until done, as a guest
        re-executes its VMCALL.  Raises HypercallError on failure unless ``check`` is False."""
        control = encode_control(code, rep_count=rep_count, var_header_qwords=var_header_qwords)
        io = BytesIo(data)
        table = self.hypervisor.hypercalls
        while True:
            out = table.dispatch(self.hv, None, control, io)
            if out.continue_control is None:
                break
            control = out.continue_control
        if check and out.status != H.HV_STATUS_SUCCESS:
            raise HypercallError(code, out.status, out.reps_completed)
        return out.status, out.reps_completed, bytes(io.output)

    # ---- memory the root owns ------------------------------------------------------------
    def add_memory(self, spa: int, size: int) -> None:
        """Give the root ``size`` bytes of host RAM at root-physical ``spa`` to hand out."""
        self.hv.memory.map_ram(spa, size)

    def write_memory(self, spa: int, data: bytes) -> None:
        self.hv.memory.write(spa, data)

    def read_memory(self, spa: int, size: int) -> bytes:
        return self.hv.memory.read(spa, size)

    # ---- partitions ----------------------------------------------------------------------
    def create_partition(self, flags: int = 0) -> ChildHandle:
        """HvCallCreatePartition; the new child has the default guest CPUID/privileges."""
        data = struct.pack("<QQII16sQQ", flags, 0, 0, 0, b"", 0, 0)
        _, _, out = self.hypercall(H.HvCallCreatePartition, data)
        return ChildHandle(self, struct.unpack_from("<Q", out)[0])

    # ---- ports ----------------------------------------------------------------------------
    def create_port(self, port_id: int, port_type: int, *, port_partition: int | None = None,
                    connection_partition: int = 0, target_sint: int = 0, target_vp: int = 0,
                    base_flag: int = 0, flag_count: int = 0, monitor_gpa: int = 0) -> None:
        """HvCallCreatePort (default: a port in the root partition itself)."""
        if port_type == H.HV_PORT_TYPE_MONITOR:
            info = struct.pack("<IIQQ", port_type, 0, monitor_gpa, 0)
        elif port_type == H.HV_PORT_TYPE_EVENT:
            info = struct.pack("<IIIIHHI", port_type, 0, target_sint, target_vp, base_flag,
                               flag_count, 0)
        else:
            info = struct.pack("<IIIIQ", port_type, 0, target_sint, target_vp, 0)
        pid = H.HV_PARTITION_ID_SELF if port_partition is None else port_partition
        data = struct.pack("<QIBBHQ", pid, port_id, 0, 0, 0, connection_partition) + info + (
            b"\0" * 8)
        self.hypercall(H.HvCallCreatePort, data)

    def connect_port(self, connection_partition: int, connection_id: int, port_id: int, *,
                     port_partition: int | None = None, port_type: int = H.HV_PORT_TYPE_MESSAGE,
                     monitor_gpa: int = 0, check: bool = True) -> int:
        """HvCallConnectPort: let ``connection_partition`` send on ``connection_id``; returns
        the HV_STATUS (raises HypercallError on failure unless ``check`` is False)."""
        pid = self.id if port_partition is None else port_partition
        data = (struct.pack("<QIBBHQII", connection_partition, connection_id, 0, 0, 0, pid,
                            port_id, 0)
                + struct.pack("<IIQ", port_type, 0, monitor_gpa).ljust(32, b"\0") + b"\0" * 8)
        return self.hypercall(H.HvCallConnectPort, data, check=check)[0]

    def delete_port(self, port_id: int, *, port_partition: int | None = None,
                    check: bool = True) -> int:
        """HvCallDeletePort (default: a port of the root partition itself); returns the
        HV_STATUS (raises HypercallError on failure unless ``check`` is False)."""
        pid = H.HV_PARTITION_ID_SELF if port_partition is None else port_partition
        return self.hypercall(H.HvCallDeletePort, struct.pack("<QII", pid, port_id, 0),
                              check=check)[0]

    def disconnect_port(self, connection_partition: int, connection_id: int, *,
                        check: bool = True) -> int:
        """HvCallDisconnectPort: ``connection_partition`` may no longer use the id; returns
        the HV_STATUS (raises HypercallError on failure unless ``check`` is False)."""
        return self.hypercall(H.HvCallDisconnectPort,
                              struct.pack("<QII", connection_partition, connection_id, 0),
                              check=check)[0]


class ChildHandle:
    """A child partition as its parent sees it."""

    def __init__(self, root: RootPartition, pid: int) -> None:
        self.root = root
        self.id = pid

    @property
    def hv(self) -> PartitionHv:
        return self.root.hypervisor.partitions[self.id]

    @property
    def partition(self) -> Partition:
        """The child's Partition (memory, VPs, run loop)."""
        part = self.hv.partition
        assert part is not None
        return part

    def delete(self) -> None:
        """HvCallDeletePartition."""
        self.root.hypercall(H.HvCallDeletePartition, struct.pack("<Q", self.id))

    def get_property(self, code: int) -> int:
        """HvCallGetPartitionProperty."""
        _, _, out = self.root.hypercall(H.HvCallGetPartitionProperty,
                                        struct.pack("<QII", self.id, code, 0))
        return int(struct.unpack_from("<Q", out)[0])

    def set_property(self, code: int, value: int) -> None:
        """HvCallSetPartitionProperty."""
        self.root.hypercall(H.HvCallSetPartitionProperty,
                            struct.pack("<QIIQ", self.id, code, 0, value))

    def map_gpa_pages(self, gpa: int, spa: int, size: int, flags: int = _ALL_ACCESS) -> None:
        """HvCallMapGpaPages: make root memory [spa, spa+size) the child's [gpa, gpa+size)."""
        pages = -(-size // PAGE)
        for first in range(0, pages, _MAP_BATCH):
            n = min(_MAP_BATCH, pages - first)
            elems = page_run_bytes(spa // PAGE + first, n)
            self.root.hypercall(H.HvCallMapGpaPages,
                                struct.pack("<QQQ", self.id, gpa // PAGE + first, flags)
                                + elems,
                                rep_count=n)

    def unmap_gpa_pages(self, gpa: int, size: int) -> None:
        """HvCallUnmapGpaPages."""
        pages = -(-size // PAGE)
        for first in range(0, pages, 0xFFF):
            n = min(0xFFF, pages - first)
            self.root.hypercall(H.HvCallUnmapGpaPages,
                                struct.pack("<QQII", self.id, gpa // PAGE + first, 0, 0),
                                rep_count=n)

    def create_vp(self, index: int | None = None) -> VirtualProcessor:
        """HvCallCreateVp (next index by default); returns the new VP."""
        if index is None:
            index = len(self.partition.vps)
        self.root.hypercall(H.HvCallCreateVp, struct.pack("<QIBHBQQQ", self.id, index, 0, 0, 0,
                                                          0, 0, 0))
        return self.partition.vps[index]

    def install_intercept(self, intercept_type: int, access: int, parameter: int = 0) -> None:
        """HvCallInstallIntercept."""
        self.root.hypercall(H.HvCallInstallIntercept,
                            struct.pack("<QIIQ", self.id, access, intercept_type, parameter))

    def get_vp_registers(self, vp_index: int, names: Iterable[int]) -> list[int]:
        """HvCallGetVpRegisters: 128-bit values, in the order of ``names``."""
        names = list(names)
        data = struct.pack("<QIBBH", self.id, vp_index, 0, 0, 0) + b"".join(
            struct.pack("<I", n) for n in names)
        _, _, out = self.root.hypercall(H.HvCallGetVpRegisters, data, rep_count=len(names))
        return [int.from_bytes(out[16 * i:16 * i + 16], "little") for i in range(len(names))]

    def set_vp_registers(self, vp_index: int, values: dict[int, int]) -> None:
        """HvCallSetVpRegisters."""
        data = struct.pack("<QIBBH", self.id, vp_index, 0, 0, 0) + b"".join(
            struct.pack("<I12s", n, b"") + (v & ((1 << 128) - 1)).to_bytes(16, "little")
            for n, v in values.items())
        self.root.hypercall(H.HvCallSetVpRegisters, data, rep_count=len(values))
