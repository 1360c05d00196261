"""Guest-level test: the a20 guest boots through the BIOS and checks the 1 MiB wrap through
port 92h, the 8042 output port (A20 on while either enables it) and INT 15h AX=24xxh."""

from __future__ import annotations

from collections.abc import Callable

from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

EXPECTED = [
    "A20 after the BIOS: on",
    "8042 D1h CDh, port 92h on: on (output port CD)",
    "port 92h off: masked",
    "port 92h on: on",
    "port 92h off, 8042 DFh: on",
    "8042 DDh: masked",
    "store at FFFF:0611 landed at 0601",
    "port 92h on: on",
    "INT 15h AX=2400h: masked, AX=2402h AL=00",
    "INT 15h AX=2401h: on, AX=2402h AL=01",
    "INT 15h AX=2403h BX=0002",
    "8042 DFh, INT 15h AX=2400h: masked, AX=2402h AL=00",
    "PASS",
]


def boot(prepare: Callable[[Machine], None] | None = None,
         **config: object) -> tuple[Machine, int, list[str]]:
    out = bytearray()
    disk = MemoryImage(bytearray(build_guest("a20")))
    m = Machine(MachineConfig(disk=disk, serial_output=out.extend, **config))  # type: ignore[arg-type]
    if prepare:
        prepare(m)
    result = m.run(max_instructions=5_000_000)
    lines = out.decode("ascii", "replace").replace("\r", "").splitlines()
    return m, result.status, lines


def test_a20_guest() -> None:
    m, status, lines = boot()
    assert status == 1, "\n".join(lines)
    assert lines[0] == "hyperv-emu BIOS"
    assert lines[1:] == EXPECTED
    # Last step: INT 15h AX=2400h turned both sources off (8042 output port CDh, port 92h bit 1
    # clear), so the gate masks.
    assert m.i8042.output_port == 0xCD and m.port92.value & 0x02 == 0
    assert (m.a20.port92, m.a20.kbc) == (False, False)
    assert not m.partition.memory.a20
    # The store made through the wrap is at 0601h; 100601h kept its 0.
    assert m.partition.memory.read(0x600, 2, physical=True) == b"\x5a\x77"
    assert m.partition.memory.read(0x100600, 2, physical=True) == b"\xa5\x00"


def test_a20_guest_without_the_hypervisor_interface() -> None:
    _, status, lines = boot(hyperv=False)
    assert status == 1 and lines[1:] == EXPECTED


def test_a20_guest_fails_when_the_8042_does_not_reach_the_gate() -> None:
    def cut(m: Machine) -> None:
        m.i8042.on_a20 = None

    _, status, lines = boot(cut)
    # The 8042's power-on "A20 on" then keeps the gate open whatever port 92h does.
    assert status == 3
    assert lines[-2:] == ["port 92h off: on", "FAIL: FS:0610 shows the wrong A20 state"]


def test_a20_guest_fails_when_the_last_source_written_wins() -> None:
    def last_wins(m: Machine) -> None:
        m.port92.on_a20 = m.partition.set_a20
        m.i8042.on_a20 = m.partition.set_a20

    _, status, lines = boot(last_wins)
    assert status == 3
    assert lines[-1] == "FAIL: FS:0610 shows the wrong A20 state"
    assert lines[-2].startswith("8042 D1h CDh, port 92h on: masked")
