"""The Linux boot protocol loader (hyperv_emu/worker/linuxboot.py): a synthetic bzImage whose
setup code (tests/worker/linux_setup.S) checks the entry state and the zero page it is given,
plus the loader's refusals, each with one clear message."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from hyperv_emu.asm import assemble, expand_includes
from hyperv_emu.cli import main
from hyperv_emu.worker import linuxboot as lb
from hyperv_emu.worker.machine import ConfigError, Machine, MachineConfig

HERE = Path(__file__).resolve().parent
CMDLINE = "console=ttyS0 vga=ext hello=world"
INITRD_ADDR_MAX = 0x1BFFFFF  # below the 32 MiB of RAM: the header's limit must win
INIT_SIZE = 0x100000
PREF_ADDRESS = 0x1000000


def bzimage(*, version: int = 0x020F, loadflags: int = lb.LOADED_HIGH,
            kernel_size: int = 0x3000, init_size: int = INIT_SIZE,
            initrd_addr_max: int = INITRD_ADDR_MAX, cmdline_size: int = 255) -> bytes:
    """A bzImage: the setup code of linux_setup.S with a setup header, then a protected-mode
    payload starting "PMKERNEL"."""
    code = assemble(expand_includes(HERE / "linux_setup.S"), 16, 0x200)
    setup = bytearray(0x200) + bytearray(code)
    setup += bytes(-len(setup) % 512)
    setup_sects = len(setup) // 512 - 1
    rng = random.Random(9)
    kernel = b"PMKERNEL" + bytes(rng.randrange(256) for _ in range(kernel_size - 8))
    struct.pack_into("<B", setup, lb.OFF_SETUP_SECTS, setup_sects)
    struct.pack_into("<I", setup, lb.OFF_SYSSIZE, kernel_size // 16)
    struct.pack_into("<H", setup, lb.OFF_BOOT_FLAG, lb.BOOT_FLAG)
    struct.pack_into("<IH", setup, lb.OFF_HEADER, lb.HDRS_MAGIC, version)
    setup[lb.OFF_LOADFLAGS] = loadflags
    struct.pack_into("<I", setup, lb.OFF_CODE32_START, 0x100000)
    struct.pack_into("<I", setup, lb.OFF_INITRD_ADDR_MAX, initrd_addr_max)
    struct.pack_into("<IB", setup, lb.OFF_KERNEL_ALIGNMENT, 0x200000, 1)
    struct.pack_into("<I", setup, lb.OFF_CMDLINE_SIZE, cmdline_size)
    struct.pack_into("<Q", setup, lb.OFF_PREF_ADDRESS, PREF_ADDRESS)
    struct.pack_into("<I", setup, lb.OFF_INIT_SIZE, init_size)
    return bytes(setup) + kernel


def _initrd(size: int = 0x5432) -> bytes:
    rng = random.Random(5)
    return bytes(rng.randrange(256) for _ in range(size))


def _run(image: bytes, initrds: list[bytes], memory_mib: int = 32) -> tuple[Machine, str, int]:
    out = bytearray()
    m = Machine(MachineConfig(memory_mib=memory_mib, kernel=image, append=CMDLINE,
                              initrds=[(f"part{i}", d) for i, d in enumerate(initrds)],
                              serial_output=out.extend))
    ex = m.run(max_instructions=20_000_000)
    return m, out.decode(errors="replace"), ex.status


def test_setup_code_sees_the_boot_protocol_state() -> None:
    image, parts = bzimage(), [_initrd(), b"second part"]
    m, out, status = _run(image, parts)
    assert "PASS" in out and status == 1, out
    initrd = b"".join(parts)
    kernel = image[len(image) - 0x3000:]
    assert f"kernel sum {sum(kernel):08X}" in out
    assert f"initrd sum {sum(initrd):08X}" in out
    plan = m._kernel_plan
    assert isinstance(plan, lb.LinuxBootPlan)
    # Highest page-aligned place under initrd_addr_max (the RAM ends higher, at 32 MiB).
    assert plan.initrd_addr == (INITRD_ADDR_MAX + 1 - len(initrd)) & ~0xFFF
    assert f"initrd at {plan.initrd_addr:08X}" in out
    assert [e.fields for e in m.log.of_kind("linux")] == [
        {"setup": 0x90000, "kernel": 0x100000, "initrd": plan.initrd_addr}]


def test_initrd_under_the_end_of_ram() -> None:
    # With initrd_addr_max above the RAM, the end of RAM (from the memory map) is the limit.
    m, out, status = _run(bzimage(initrd_addr_max=0x7FFFFFFF), [_initrd()], memory_mib=20)
    assert "PASS" in out and status == 1, out
    plan = m._kernel_plan
    assert isinstance(plan, lb.LinuxBootPlan)
    assert plan.initrd_addr == ((20 << 20) - 0x5432) & ~0xFFF


def test_setup_code_fails_on_a_wrong_command_line() -> None:
    # The self-check can fail: the same image with another command line says why.
    out = bytearray()
    m = Machine(MachineConfig(kernel=bzimage(), append="console=ttyS0 vga=ext hello=moon",
                              initrds=[("i", _initrd())], serial_output=out.extend))
    ex = m.run(max_instructions=20_000_000)
    assert ex.status == 3 and "FAIL: command line" in out.decode()


def test_kernel_type_comes_from_the_file() -> None:
    image = bzimage()
    assert lb.is_linux_kernel(image)
    assert not lb.is_linux_kernel(image[:0x200])
    hdr = lb.parse_header(image)
    assert (hdr.version, hdr.loaded_high, hdr.init_size) == (0x020F, True, INIT_SIZE)


@pytest.mark.parametrize(("word", "mode"), [
    ("", 0xFFFF), ("vga=normal", 0xFFFF), ("vga=ext", 0xFFFE), ("vga=ask", 0xFFFD),
    ("quiet vga=0x317", 0x317), ("vga=791", 791)])
def test_vid_mode(word: str, mode: int) -> None:
    assert lb.vid_mode_for(word) == mode


def test_old_command_line_protocol() -> None:
    # Protocol 2.01: no cmd_line_ptr; the command line is found through the magic A33Fh and
    # its offset in the zero page; the heap ends at 9800h (boot.rst's sample configuration).
    plan = lb.plan_boot(bzimage(version=0x0201), ram_ranges=[(0x100000, 31 << 20, 1)],
                        cmdline="root=/dev/sda")
    setup = plan.writes[0][1]
    assert struct.unpack_from("<HH", setup, lb.OFF_CL_MAGIC) == (lb.CL_MAGIC, 0x9800)
    assert struct.unpack_from("<I", setup, lb.OFF_CMD_LINE_PTR)[0] == 0
    assert (0x99800, b"root=/dev/sda\0") in plan.writes
    assert struct.unpack_from("<H", setup, lb.OFF_HEAP_END_PTR)[0] == 0x9600


def test_zimage_goes_to_64k() -> None:
    plan = lb.plan_boot(bzimage(loadflags=0), ram_ranges=[(0x100000, 31 << 20, 1)])
    assert plan.kernel_addr == 0x10000
    assert plan.writes[1][0] == 0x10000


@pytest.mark.parametrize(("image", "initrd", "memory", "words"), [
    (bzimage(version=0x01FF), b"", 32, ("protocol 1.255", "too old", "2.00")),
    (bzimage(init_size=0x2000000), b"", 32, ("does not fit", "48 MiB", "32 MiB", "raise -m")),
    (bzimage(), bytes(0x1000000), 32, ("initrd", "does not fit", "raise -m")),
    (bzimage(cmdline_size=10), b"", 32, ("command line", "at most 10")),
], ids=["old-protocol", "kernel-too-big", "initrd-too-big", "cmdline-too-long"])
def test_refusals(image: bytes, initrd: bytes, memory: int, words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        Machine(MachineConfig(memory_mib=memory, kernel=image, append=CMDLINE,
                              initrds=[("i", initrd)] if initrd else []))
    for word in words:
        assert word in str(err.value)


def test_cli_boots_a_bzimage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "bzImage", tmp_path / "initrd"
    kernel.write_bytes(bzimage())
    initrd.write_bytes(_initrd())
    status = main(["run", "--kernel", str(kernel), "--initrd", str(initrd), "--append", CMDLINE])
    out, err = capsys.readouterr()
    # Linux gets the command line alone (no kernel path in front, unlike Multiboot).
    assert status == 1 and "PASS" in out, err


def test_cli_too_old_protocol_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    kernel = tmp_path / "zImage"
    kernel.write_bytes(bzimage(version=0x0105))
    try:
        status = main(["run", "--kernel", str(kernel)])
    except SystemExit as exc:
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2 and "too old" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
