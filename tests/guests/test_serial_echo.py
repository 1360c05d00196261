"""The serial_echo guest with host input on COM1: what a guest that sets up its own UART
receives, with and without waiting for its prompt (the flow-controlled sender of
Uart16550.attach_input, fed by worker.serial_input.StreamInput)."""

from __future__ import annotations

import datetime
import io

from hyperv_emu.guests import build_guest
from hyperv_emu.vsp.storage.raw import MemoryImage
from hyperv_emu.worker.machine import Machine, MachineConfig

RTC_BASE = datetime.datetime(2026, 11, 28, 12, 0, 0)
PASS_STATUS = 1

DATA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
PROMPT = b"serial echo> "


def echo(data: bytes | io.BytesIO, after: bytes = b"") -> tuple[int, bytes, Machine]:
    """Boot serial_echo with ``data`` as COM1 input; the status and what followed the prompt."""
    out = bytearray()
    m = Machine(MachineConfig(disk=MemoryImage(bytearray(build_guest("serial_echo"))),
                              serial_output=out.extend, rtc_base=RTC_BASE,
                              serial_input=data, serial_input_after=after))
    ex = m.run(max_instructions=200_000_000)
    text = bytes(out)
    assert text.count(PROMPT) == 1, text
    return ex.status, text.split(PROMPT, 1)[1], m


def test_alone_it_echoes_nothing_and_passes() -> None:
    status, rest, _m = echo(b"")
    assert status == PASS_STATUS
    assert rest == b"\r\nechoed 0000 bytes\r\nPASS\r\n"


def test_input_after_the_prompt_arrives_whole() -> None:
    status, rest, m = echo(DATA, after=PROMPT)
    assert status == PASS_STATUS, rest
    assert rest == DATA + b"\r\nechoed 0024 bytes\r\nPASS\r\n"  # 36 bytes, no overrun
    assert m.serial_input is not None and m.serial_input.consumed == len(DATA)


def test_input_from_power_on_loses_what_reached_the_fifo_before_the_guest_reset_it() -> None:
    """Without waiting, the sender starts once the BIOS has programmed the line at POST; what
    reached the FIFO before the guest's own FCR reset is lost, as on a PC. The rest arrives
    without overrun, and the run is the same every time."""
    status, rest, _m = echo(DATA)
    assert status == PASS_STATUS, rest
    echoed = rest.split(b"\r\n", 1)[0]
    lost = len(DATA) - len(echoed)
    assert 0 < lost <= 16 and echoed == DATA[lost:]
    assert rest.endswith(f"\r\nechoed {len(echoed):04X} bytes\r\nPASS\r\n".encode())
    assert echo(DATA)[1] == rest


def test_eot_ends_and_the_rest_is_never_read() -> None:
    stream = io.BytesIO(b"hi\x04" + b"never read" * 10)
    status, rest, m = echo(stream, after=PROMPT)
    assert status == PASS_STATUS
    assert rest == b"hi\r\nechoed 0002 bytes\r\nPASS\r\n"
    # Reading EOT made room, so more characters went on the line while the guest printed its
    # closing lines (every LSR poll and THR write takes IO_ACCESS_NS: about three character
    # times at 115200 baud in all); nothing else was taken from the stream.
    assert m.serial_input is not None and m.serial_input.consumed == 6
