"""Small PC system devices: port 92h, the 8042 keyboard controller (with the PS/2 keyboard of
vdev/ps2kbd.py on its keyboard port), the 80h POST code port, the E9h debug console and the F4h
exit port.

Each claims one or two ports; a wider access to a one-port device uses only the low byte of the
value (the other bytes belong to the following ports, which the device does not own).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from hyperv_emu.vdev.base import Device, EventSink, IrqLine, null_events
from hyperv_emu.vdev.ps2kbd import BREAK_PREFIX, Ps2Keyboard, translate


def _byte_read(value: int, size: int) -> int:
    """A one-port device's byte read with a ``size``-byte access: the byte in the low byte,
    FFh from each following port, which the device does not own (nothing drives them)."""
    return value | (((1 << (8 * size)) - 1) & ~0xFF)


class FastA20(Device):
    """System Control Port A (92h): bit 1 gates A20, a 0-to-1 edge of bit 0 resets the CPU."""

    name = "port92"
    SAVE_VERSION = 1
    ports = ((0x92, 1),)

    def __init__(
        self,
        on_reset: Callable[[], None],
        on_a20: Callable[[bool], None] | None = None,
        events: EventSink = null_events,
    ) -> None:
        self.on_reset = on_reset
        self.on_a20 = on_a20
        self._events = events
        self.value = 0

    def reset(self) -> None:
        self.value = 0

    def io_read(self, port: int, size: int) -> int:
        return _byte_read(self.value, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        old, self.value = self.value, value
        if (old ^ value) & 0x02:
            self._events("a20", source="port92", enabled=bool(value & 2))
            if self.on_a20 is not None:
                self.on_a20(bool(value & 2))
        # Intel PIIX4 datasheet, Port 92h: "INIT_NOW" fires on a 0-to-1 transition of bit 0.
        if value & 1 and not old & 1:
            self._events("reset", source="port92")
            self.on_reset()

    def save(self) -> dict[str, Any]:
        return {**super().save(), "value": self.value}

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.value = int(state["value"]) & 0xFF


# 8042 status register bits (IBM PC AT Technical Reference, "Keyboard Controller").
OBF, IBF, SYS, A2, INH, AUXB = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
# Command byte bits.
CB_KBD_INT, CB_AUX_INT, CB_SYS, CB_KBD_OFF, CB_AUX_OFF = 0x01, 0x02, 0x04, 0x10, 0x20
CB_XLAT = 0x40  # translate the keyboard's scan codes to set 1
# Output port bits.
OUT_RESET, OUT_A20 = 0x01, 0x02


class I8042(Device):
    """The keyboard controller: A20 gating, CPU reset, its own commands, and the keyboard port.

    Bytes from the keyboard enter the one-byte output buffer only when it is empty and the
    keyboard interface is enabled (command byte bit 4 clear), as the 8042 holds the keyboard's
    clock line otherwise; with command byte bit 6 set, scan codes are translated from set 2 to
    set 1 (an F0h break prefix is swallowed and sets bit 7 of the next code)."""

    name = "i8042"
    SAVE_VERSION = 2
    ports = ((0x60, 1), (0x64, 1))

    def __init__(
        self,
        on_reset: Callable[[], None],
        on_a20: Callable[[bool], None] | None = None,
        *,
        irq1: IrqLine | None = None,
        irq12: IrqLine | None = None,
        keyboard: Ps2Keyboard | None = None,
        events: EventSink = null_events,
    ) -> None:
        self.on_reset = on_reset
        self.on_a20 = on_a20
        self.irq1 = irq1
        self.irq12 = irq12
        self._events = events
        self.keyboard = keyboard if keyboard is not None else Ps2Keyboard()
        self.keyboard.on_data = self._pull
        self.reset()

    def reset(self) -> None:
        # The 8042's quasi-bidirectional port pins come out of reset high, so RESET is inactive
        # and A20 is enabled; the system flag is 0 after power-on (AT Technical Reference).
        self.command_byte = 0x00
        self.output_port = 0xCF
        self.last_was_command = False
        self.pending = 0  # controller command waiting for its data byte (60h, D1h, ...)
        self.xlat_break = False  # translation saw F0h: the next code is a break code
        self.outq: deque[tuple[int, bool]] = deque()  # (byte, from the aux port)
        self.last_read = 0
        self.keyboard.reset()
        self._update_irq()

    # The keyboard's state, as the controller's tests and save files have named it.
    @property
    def leds(self) -> int:
        return self.keyboard.leds

    @property
    def scan_set(self) -> int:
        return self.keyboard.scan_set

    @property
    def scanning(self) -> bool:
        return self.keyboard.scanning

    # ---- output buffer -----------------------------------------------------------------------
    def _push(self, byte: int, aux: bool = False) -> None:
        self.outq.append((byte & 0xFF, aux))
        self._update_irq()

    def _pull(self) -> None:
        """Take the keyboard's next byte if the output buffer is free and the interface on."""
        kbd = self.keyboard
        while not self.outq and not self.command_byte & CB_KBD_OFF and kbd.has_data():
            byte, scan = kbd.pop()
            if scan and self.command_byte & CB_XLAT:
                if byte == BREAK_PREFIX:
                    self.xlat_break = True
                    continue
                byte = translate(byte) | (0x80 if self.xlat_break else 0)
                self.xlat_break = False
            self._push(byte)

    def _update_irq(self) -> None:
        head = self.outq[0] if self.outq else None
        kbd = head is not None and not head[1] and bool(self.command_byte & CB_KBD_INT)
        aux = head is not None and head[1] and bool(self.command_byte & CB_AUX_INT)
        if self.irq1 is not None:
            self.irq1.set_level(kbd)
        if self.irq12 is not None:
            self.irq12.set_level(aux)

    def status(self) -> int:
        """The status register (port 64h read)."""
        value = INH  # keyboard not inhibited by the key lock
        if self.outq:
            value |= OBF | (AUXB if self.outq[0][1] else 0)
        if self.command_byte & CB_SYS:
            value |= SYS
        if self.last_was_command:
            value |= A2
        return value  # IBF is never set: every byte is taken at once

    # ---- port access -------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        high = _byte_read(0, size)
        if port == 0x64:
            return self.status() | high
        if self.outq:
            self.last_read = self.outq.popleft()[0]
            # IRQ1 drops with OBF, and rises again (an edge) if the keyboard has more.
            self._update_irq()
            self._pull()
        # An empty output buffer reads back the last byte again.
        return self.last_read | high

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == 0x64:
            self.last_was_command = True
            self._command(value)
        else:
            self.last_was_command = False
            self._data(value)

    def _command(self, cmd: int) -> None:
        self.pending = 0
        self._events("i8042", op="command", command=cmd)
        if cmd == 0x20:
            self._push(self.command_byte)
        elif 0x21 <= cmd <= 0x3F:
            self._push(0)  # other controller RAM bytes
        elif 0x60 <= cmd <= 0x7F or cmd in (0xD1, 0xD2, 0xD3, 0xD4):
            self.pending = cmd
        elif cmd == 0xA7:
            self.command_byte |= CB_AUX_OFF
        elif cmd == 0xA8:
            self.command_byte &= ~CB_AUX_OFF
        elif cmd in (0xA9, 0xAB):
            self._push(0x00)  # interface test: no error
        elif cmd == 0xAA:
            self._push(0x55)  # self-test passed
        elif cmd == 0xAD:
            self.command_byte |= CB_KBD_OFF
        elif cmd == 0xAE:
            self.command_byte &= ~CB_KBD_OFF
            self._pull()
        elif cmd == 0xC0:
            # Input port: keyboard not inhibited, no manufacturing jumper, colour display.
            self._push(0xA0)
        elif cmd == 0xD0:
            out = self.output_port & ~0x30
            if self.outq:
                out |= 0x20 if self.outq[0][1] else 0x10  # output-buffer-full lines
            self._push(out)
        elif cmd == 0xDD:
            self._set_output(self.output_port & ~OUT_A20)
        elif cmd == 0xDF:
            self._set_output(self.output_port | OUT_A20)
        elif cmd == 0xE0:
            self._push(0x00)  # test inputs
        elif cmd >= 0xF0:
            # Pulse output port bits whose mask bit is 0; only bit 0 (reset) matters (FEh).
            if not cmd & 0x01:
                self._events("reset", source="i8042")
                self.on_reset()
        # Anything else is ignored, as by the real controller.

    def _data(self, value: int) -> None:
        cmd, self.pending = self.pending, 0
        if 0x60 <= cmd <= 0x7F:
            if cmd == 0x60:
                self.command_byte = value
                self._update_irq()
                self._pull()
        elif cmd == 0xD1:
            self._set_output(value)
        elif cmd == 0xD2:
            self._push(value)
        elif cmd == 0xD3:
            self._push(value, aux=True)
        elif cmd == 0xD4:
            pass  # no mouse attached: the byte goes nowhere
        else:
            self._keyboard(value)

    def _set_output(self, value: int) -> None:
        old, self.output_port = self.output_port, value & 0xFF
        if (old ^ value) & OUT_A20:
            self._events("a20", source="i8042", enabled=bool(value & OUT_A20))
            if self.on_a20 is not None:
                self.on_a20(bool(value & OUT_A20))
        if not value & OUT_RESET:
            # Output port bit 0 drives the CPU's RESET line low-active.
            self._events("reset", source="i8042")
            self.output_port |= OUT_RESET
            self.on_reset()

    # ---- the keyboard behind the controller --------------------------------------------------
    def _keyboard(self, byte: int) -> None:
        """A byte written to port 60h with no controller command pending: to the keyboard."""
        self.keyboard.receive(byte)
        self._pull()

    # ---- save / restore ----------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {
            **super().save(),
            "command_byte": self.command_byte, "output_port": self.output_port,
            "last_was_command": self.last_was_command, "pending": self.pending,
            "xlat_break": self.xlat_break, "last_read": self.last_read,
            "outq": [[b, aux] for b, aux in self.outq], "keyboard": self.keyboard.save(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.command_byte = int(state["command_byte"])
        self.output_port = int(state["output_port"])
        self.last_was_command = bool(state["last_was_command"])
        self.pending = int(state["pending"])
        self.xlat_break = bool(state["xlat_break"])
        self.keyboard.restore(state["keyboard"])
        self.last_read = int(state["last_read"])
        self.outq = deque((int(b), bool(aux)) for b, aux in state["outq"])
        self._update_irq()


class PostCode(Device):
    """The POST diagnostic port (80h): writes are traced, reads return the last code."""

    name = "post"
    SAVE_VERSION = 1
    ports = ((0x80, 1),)

    def __init__(self, events: EventSink = null_events) -> None:
        self._events = events
        self.code = 0

    def reset(self) -> None:
        self.code = 0

    def io_read(self, port: int, size: int) -> int:
        return _byte_read(self.code, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.code = value & 0xFF
        self._events("post", code=self.code)

    def save(self) -> dict[str, Any]:
        return {**super().save(), "code": self.code}

    def restore(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.code = int(state["code"]) & 0xFF


class DebugCon(Device):
    """The Bochs/QEMU debug console (E9h): written bytes go to ``output``; reads return E9h."""

    name = "debugcon"
    SAVE_VERSION = 1
    ports = ((0xE9, 1),)

    def __init__(self, output: Callable[[bytes], None]) -> None:
        self.output = output

    def io_read(self, port: int, size: int) -> int:
        # Reading E9h returns E9h so a guest can detect the port.
        return _byte_read(0xE9, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.output(bytes([value & 0xFF]))


class ExitDevice(Device):
    """A test-exit port (F4h) like QEMU's isa-debug-exit: a write of v calls ``on_exit(v)``.

    The worker turns that into process exit status ``(v << 1) | 1``, as isa-debug-exit does.
    """

    name = "exit"
    SAVE_VERSION = 1
    ports = ((0xF4, 1),)

    def __init__(self, on_exit: Callable[[int], None], events: EventSink = null_events) -> None:
        self.on_exit = on_exit
        self._events = events

    def io_read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        if size not in (1, 2, 4):
            size = 4
        value &= (1 << (8 * size)) - 1
        self._events("exit", value=value)
        self.on_exit(value)


def exit_status(value: int) -> int:
    """The process exit status for a write of ``value`` to the exit port (QEMU convention)."""
    return (value << 1) | 1
