"""Property and crash-consistency tests for VHD dynamic and differencing images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperv_emu.vsp.storage import BlockDeviceError
from hyperv_emu.vsp.storage.vhd import VhdImage, check_vhd, create_vhd

KiB = 1024
SIZE = 192 * KiB

writes = st.lists(
    st.tuples(
        st.integers(0, SIZE - 1),  # byte offset: often unaligned
        st.integers(1, 40 * KiB),  # length (clipped to the disk)
        st.integers(0, 255),  # fill seed
    ),
    min_size=1,
    max_size=8,
)


def fill(n: int, seed: int) -> bytes:
    return bytes((seed + i * 13) & 0xFF for i in range(n))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=writes, differencing=st.booleans(), bs_log=st.integers(12, 15))
def test_random_writes_match_a_bytearray_model(
    ops: list[tuple[int, int, int]], differencing: bool, bs_log: int
) -> None:
    # Durability is the crash tests' subject; here fsync only costs time.
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        path = Path(tmp) / "disk.vhd"
        model = bytearray(SIZE)
        if differencing:
            parent = Path(tmp) / "parent.vhd"
            create_vhd(parent, SIZE, "dynamic", block_size=1 << 14)
            with VhdImage(parent) as p:
                for off in range(0, SIZE, 24 * KiB):  # parent data in some places only
                    p.write(off + 700, fill(5000, off))
                    model[off + 700 : off + 5700] = fill(5000, off)
            before = parent.read_bytes()
            create_vhd(path, None, "differencing", parent=parent, block_size=1 << bs_log)
        else:
            create_vhd(path, SIZE, "dynamic", block_size=1 << bs_log)
        with VhdImage(path) as d:
            for off, n, seed in ops:
                n = min(n, SIZE - off)
                d.write(off, fill(n, seed))
                model[off : off + n] = fill(n, seed)
                lo, hi = max(0, off - 600), min(SIZE, off + n + 600)
                assert d.read(lo, hi - lo) == model[lo:hi]
            assert d.read(0, SIZE) == model
        with VhdImage(path, read_only=True) as d:  # persisted, and readable afresh
            assert d.read(0, SIZE) == model
        assert check_vhd(path) == []
        if differencing:
            assert parent.read_bytes() == before


# -- crash consistency -------------------------------------------------------------------------

BS = 16 * KiB


def _record(img: VhdImage, log: list[tuple[int, bytes]]) -> None:
    """Make ``img`` log every file write it makes, in order."""
    real = img._pwrite

    def pwrite(offset: int, data: bytes) -> None:
        log.append((offset, bytes(data)))
        real(offset, data)

    img._pwrite = pwrite  # type: ignore[method-assign]


def _apply(base: bytes, log: list[tuple[int, bytes]]) -> bytearray:
    buf = bytearray(base)
    for off, data in log:
        if off + len(data) > len(buf):
            buf.extend(bytes(off + len(data) - len(buf)))
        buf[off : off + len(data)] = data
    return buf


def _crash_states(base: bytes, log: list[tuple[int, bytes]]) -> list[tuple[str, bytes]]:
    """The file as a crash could leave it between or inside each write of ``log``.

    Per write k: the writes before it done; plus, if k extends the file, the file grown with
    zeros but nothing written (size metadata reached the disk first); plus k torn after the
    first half of its whole sectors.
    """
    states = []
    for k in range(len(log) + 1):
        done = _apply(base, log[:k])
        states.append((f"after {k} writes", bytes(done)))
        if k == len(log):
            break
        off, data = log[k]
        if off + len(data) > len(done):
            grown = bytes(done) + bytes(off + len(data) - len(done))
            states.append((f"write {k} only extended the file", grown))
        if len(data) > 512:
            half = (len(data) // 512 // 2) * 512
            states.append((f"write {k} torn", bytes(_apply(bytes(done), [(off, data[:half])]))))
    return states


def _assert_old_or_new(path: Path, state: bytes, old: bytes, new: bytes, what: str) -> None:
    path.write_bytes(state)
    with VhdImage(path, read_only=True) as d:
        got = d.read(0, d.size)
    for s in range(0, len(got), 512):
        sec = got[s : s + 512]
        assert sec in (old[s : s + 512], new[s : s + 512]), f"{what}: sector {s // 512} garbage"


@pytest.mark.parametrize("differencing", [False, True])
def test_crash_at_every_step_of_a_write_leaves_old_or_new_data(
    tmp_path: Path, differencing: bool
) -> None:
    size = 128 * KiB
    path = tmp_path / "disk.vhd"
    if differencing:
        parent = tmp_path / "parent.vhd"
        create_vhd(parent, size, "fixed")
        with VhdImage(parent) as p:
            p.write(0, fill(size, 99))  # every sector differs from zeros
        create_vhd(path, None, "differencing", parent=parent, block_size=BS)
    else:
        create_vhd(path, size, "dynamic", block_size=BS)
    with VhdImage(path) as d:
        d.write(BS + 1024, fill(2048, 1))  # block 1 allocated, sectors 2-5 present
        old = d.read(0, size)
    base = path.read_bytes()
    log: list[tuple[int, bytes]] = []
    img = VhdImage(path)
    with img as d:
        _record(img, log)
        # one request that: overwrites present sectors, fills absent sectors of an allocated
        # block (data, then bitmap), and allocates two new blocks (footer, data, bitmap, BAT)
        d.write(BS + 512, fill(BS + BS // 2, 7))
        d.write(5 * BS - 1024, fill(3 * 1024, 8))
        new = d.read(0, size)
    assert new != old and len(log) >= 10
    for what, state in _crash_states(base, log):
        _assert_old_or_new(path, state, old, new, what)
        assert not [m for m in check_vhd(path) if "using the copy" not in m], what
    # the last state is the finished write; a crashed file can also be written again
    path.write_bytes(_crash_states(base, log[:5])[-1][1])
    with VhdImage(path) as d:
        d.write(7 * BS, b"again" * 100)
        assert d.read(7 * BS, 500) == b"again" * 100


def test_truncation_gives_old_new_or_a_clean_error(tmp_path: Path) -> None:
    size = 128 * KiB
    path = tmp_path / "disk.vhd"
    create_vhd(path, size, "dynamic", block_size=BS)
    with VhdImage(path) as d:
        d.write(0, fill(4096, 3))
        old = d.read(0, size)
    base_len = path.stat().st_size
    with VhdImage(path) as d:
        d.write(3 * BS, fill(BS, 4))
        new = d.read(0, size)
    final = path.read_bytes()
    outcomes = set()
    for cut in range(base_len - 512, len(final) + 1, 512):
        try:
            _assert_old_or_new(path, final[:cut], old, new, f"cut at {cut}")
            outcomes.add("opened")
        except BlockDeviceError as exc:
            assert "past the end" in str(exc) and str(path) in str(exc)
            outcomes.add("error")
    assert outcomes == {"opened", "error"}
