"""Host input for a COM port, read from a file or pipe a chunk at a time as the UART takes it.

The UART's flow-controlled sender (``Uart16550.attach_input``) asks for one byte whenever the
receiver can take one; :class:`StreamInput` answers from a small buffer that it refills with
one ``read`` of at most :data:`CHUNK` bytes, so memory stays bounded whatever the input is
(``/dev/zero``, a multi-gigabyte file, a pipe that never ends). On a pipe the read waits for
data: the guest's virtual clock stands still meanwhile, so the run does not depend on when the
host's bytes arrive.
"""

from __future__ import annotations

import io
from typing import BinaryIO

#: Bytes read at a time (the only input buffered in memory).
CHUNK = 64 * 1024


class StreamInput:
    """A byte source over a binary file object: ``source()`` is the next byte, or None at the
    end of the input (or after a read error, kept in :attr:`error`)."""

    def __init__(self, stream: BinaryIO | bytes) -> None:
        self._stream: BinaryIO | None = io.BytesIO(stream) if isinstance(stream, bytes) else stream
        self._buf = b""
        self._pos = 0
        #: Bytes handed out so far.
        self.consumed = 0
        #: The OSError that ended the input early, if one did.
        self.error: OSError | None = None

    def __call__(self) -> int | None:
        if self._pos >= len(self._buf) and not self._refill():
            return None
        byte = self._buf[self._pos]
        self._pos += 1
        self.consumed += 1
        return byte

    def _refill(self) -> bool:
        if self._stream is None:
            return False
        try:
            data = self._read_some(self._stream)
        except OSError as exc:
            self.error = exc
            data = b""
        if not data:
            self._stream = None
            return False
        self._buf, self._pos = data, 0
        return True

    @staticmethod
    def _read_some(stream: BinaryIO) -> bytes:
        """Up to CHUNK bytes; on a pipe or terminal what is there (at least one byte) rather
        than waiting for a full chunk: one read of the raw file (``read1`` of a buffered one,
        a plain ``read`` of an unbuffered one)."""
        read1 = getattr(stream, "read1", None)
        return bytes(read1(CHUNK) if read1 is not None else stream.read(CHUNK))


__all__ = ["CHUNK", "StreamInput"]
