"""StreamInput: COM1's host input read a chunk at a time, never further ahead than one chunk."""

from __future__ import annotations

import io
import os

from hyperv_emu.worker.serial_input import CHUNK, StreamInput


def test_bytes_come_in_order_and_the_file_is_read_one_chunk_ahead_at_most() -> None:
    data = os.urandom(3 * CHUNK + 5)
    stream = io.BytesIO(data)
    src = StreamInput(stream)
    got = bytearray()
    while (b := src()) is not None:
        got.append(b)
        assert stream.tell() - src.consumed < CHUNK
    assert bytes(got) == data and src.consumed == len(data) and src.error is None
    assert src() is None  # stays at the end


def test_a_pipe_gives_what_is_there_without_waiting_for_a_full_chunk() -> None:
    r, w = os.pipe()
    os.write(w, b"ab")
    with open(r, "rb", buffering=0) as f:
        src = StreamInput(f)
        assert (src(), src()) == (ord("a"), ord("b"))
        os.write(w, b"c")
        os.close(w)
        assert (src(), src()) == (ord("c"), None)


def test_a_read_error_ends_the_input_and_is_kept() -> None:
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, _b: object) -> int:
            raise OSError(5, "Input/output error")

    src = StreamInput(Failing())
    assert src() is None
    assert src.error is not None and src.error.errno == 5
