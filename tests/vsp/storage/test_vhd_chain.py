"""Differencing VHDs: parent locators, identity checks, chains of any depth, loops."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from hyperv_emu.vsp.storage import BlockDeviceError
from hyperv_emu.vsp.storage.vhd import VhdImage, check_vhd, create_vhd, vhd_info
from hyperv_emu.vsp.storage.vhd_format import DynamicHeader, Footer, vhd_time

MiB = 1024 * 1024
KiB = 1024


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def make_parent(p: Path, size: int = MiB, kind: str = "dynamic") -> None:
    create_vhd(p, size, kind, block_size=64 * KiB)
    with VhdImage(p) as d:
        d.write(0, b"P" * 4096)
        d.write(200 * KiB, b"Q" * 3000)


def test_differencing_layout_and_locators(tmp_path: Path) -> None:
    par, child = tmp_path / "base.vhd", tmp_path / "child.avhd"
    make_parent(par)
    create_vhd(child, None, "differencing", parent=par)
    raw = child.read_bytes()
    ft, hdr = Footer.unpack(raw[-512:]), DynamicHeader.unpack(raw[512:1536])
    pft = Footer.unpack(par.read_bytes()[-512:])
    assert ft.disk_type == 4 and ft.current_size == MiB
    assert hdr.parent_uuid == pft.unique_id
    # "Parent Time Stamp": the parent's modification time, in seconds since 2000.
    assert hdr.parent_timestamp == vhd_time(par.stat().st_mtime)
    assert hdr.parent_name == "base.vhd" and raw[512 + 64 : 512 + 80] == "base.vhd".encode(
        "utf-16-be"
    )
    locs = {loc.name: loc for loc in hdr.locators if loc.code}
    assert set(locs) == {"W2ru", "W2ku"}
    w2ru = locs["W2ru"]
    text = raw[w2ru.data_offset : w2ru.data_offset + w2ru.data_length].decode("utf-16-le")
    assert text == ".\\base.vhd" and w2ru.data_space == 1  # one sector
    w2ku = locs["W2ku"]
    assert raw[w2ku.data_offset : w2ku.data_offset + w2ku.data_length].decode(
        "utf-16-le"
    ) == str(par)
    info = vhd_info(child)
    assert info.disk_type == "differencing" and info.parent_path == str(par)
    assert info.parent_uuid == pft.unique_id and ("W2ru", ".\\base.vhd") in info.parent_locators
    assert check_vhd(child) == []


def test_reads_fall_through_and_writes_never_touch_the_parent(tmp_path: Path) -> None:
    par, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    make_parent(par)
    before, mtime = digest(par), par.stat().st_mtime_ns
    create_vhd(child, None, "differencing", parent=par, block_size=16 * KiB)
    with VhdImage(child) as d:
        assert d.parent is not None and d.parent.read_only
        assert d.read(0, 4097) == b"P" * 4096 + b"\0"
        d.write(1000, b"c" * 100)  # partial sectors merge with the parent's bytes
        d.write(200 * KiB + 2048, b"d" * 512)
        assert d.read(900, 300) == b"P" * 100 + b"c" * 100 + b"P" * 100
        assert d.read(200 * KiB + 2000, 600) == b"Q" * 48 + b"d" * 512 + b"Q" * 40
        assert d.read(500 * KiB, 16) == bytes(16)
    assert digest(par) == before and par.stat().st_mtime_ns == mtime
    with VhdImage(child, read_only=True) as d:
        assert d.read(900, 300) == b"P" * 100 + b"c" * 100 + b"P" * 100


@pytest.mark.parametrize("parent_kind", ["fixed", "dynamic"])
def test_chain_of_depth_five(tmp_path: Path, parent_kind: str) -> None:
    paths = [tmp_path / f"d{i}.vhd" for i in range(5)]
    create_vhd(paths[0], 512 * KiB, parent_kind)
    for i, p in enumerate(paths):
        if i:
            create_vhd(p, None, "differencing", parent=paths[i - 1], block_size=32 * KiB)
        with VhdImage(p) as d:
            d.write(i * 512, bytes([0x10 + i]) * 512)
            d.write(100 * KiB, bytes([0x20 + i]) * (5 - i))  # each layer shorter
        # the next layer records the parent's time stamp after these writes
    with VhdImage(paths[-1], read_only=True) as d:
        assert d.chain == [str(p) for p in reversed(paths)]
        assert d.read(0, 5 * 512) == b"".join(bytes([0x10 + i]) * 512 for i in range(5))
        assert d.read(100 * KiB, 6) == b"\x24\x23\x22\x21\x20\x00"
    with VhdImage(paths[2], read_only=True) as d:
        assert d.read(100 * KiB, 6) == b"\x22\x22\x22\x21\x20\x00"


def test_moved_chain_opens_through_relative_locator(tmp_path: Path) -> None:
    (tmp_path / "a" / "base").mkdir(parents=True)
    par, child = tmp_path / "a" / "base" / "p.vhd", tmp_path / "a" / "c.vhd"
    make_parent(par)
    create_vhd(child, None, "differencing", parent=par)
    hdr = DynamicHeader.unpack(child.read_bytes()[512:1536])
    assert any(loc.name == "W2ru" for loc in hdr.locators)
    assert ".\\base\\p.vhd" in [p for _n, p in vhd_info(child).parent_locators]
    os.rename(tmp_path / "a", tmp_path / "moved")  # W2ku now points nowhere; mtime kept
    with VhdImage(tmp_path / "moved" / "c.vhd", read_only=True) as d:
        assert d.chain[1] == str(tmp_path / "moved" / "base" / "p.vhd")
        assert d.read(0, 8) == b"P" * 8


def test_parent_in_parent_directory_uses_dotdot(tmp_path: Path) -> None:
    (tmp_path / "kids").mkdir()
    par, child = tmp_path / "p.vhd", tmp_path / "kids" / "c.vhd"
    make_parent(par)
    create_vhd(child, None, "differencing", parent=par)
    assert "..\\p.vhd" in [p for _n, p in vhd_info(child).parent_locators]
    os.unlink(par)
    with pytest.raises(BlockDeviceError) as ei:
        VhdImage(child)
    msg = str(ei.value)
    assert str(child) in msg and "parent disk not found" in msg and str(par) in msg


def test_replaced_parent_is_refused_naming_both_files(tmp_path: Path) -> None:
    par, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make_parent(par)
    create_vhd(child, None, "differencing", parent=par)
    st = par.stat()
    os.unlink(par)
    make_parent(par)  # same name and content, new unique id
    os.utime(par, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BlockDeviceError, match="unique id") as ei:
        VhdImage(child)
    assert str(child) in str(ei.value) and str(par) in str(ei.value)
    assert any("unique id" in p for p in check_vhd(child))


def test_modified_parent_is_refused(tmp_path: Path) -> None:
    par, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make_parent(par)
    # A parent last written in 2020: the child records that time, not the parent's creation
    # time (which create_vhd's lenient check also accepts) -- so the two differ.
    os.utime(par, (1.6e9, 1.6e9))
    create_vhd(child, None, "differencing", parent=par)
    with VhdImage(child, read_only=True):
        pass
    with VhdImage(par) as d:
        d.write(0, b"changed!")
    with pytest.raises(BlockDeviceError, match="modified after the child was created") as ei:
        VhdImage(child)
    assert str(child) in str(ei.value) and str(par) in str(ei.value)


def test_parent_timestamp_from_footer_is_accepted(tmp_path: Path) -> None:
    """Tools that record the parent footer's time stamp (not its mtime) still open."""
    par, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make_parent(par)
    create_vhd(child, None, "differencing", parent=par)
    pts = Footer.unpack(par.read_bytes()[-512:]).timestamp
    with open(child, "r+b") as f:
        f.seek(512)
        hdr = DynamicHeader.unpack(f.read(1024))
        hdr.parent_timestamp = pts
        f.seek(512)
        f.write(hdr.pack())
    os.utime(par, (0, 10**9 + 12345))
    with VhdImage(child, read_only=True) as d:
        assert d.read(0, 1) == b"P"


def test_loop_in_chain_is_an_error(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a.vhd", "b.vhd", "c.vhd"))
    make_parent(a)
    create_vhd(b, None, "differencing", parent=a)
    create_vhd(c, None, "differencing", parent=b)
    tmp = tmp_path / "x.vhd"
    create_vhd(tmp, None, "differencing", parent=c)
    shutil.move(tmp, a)  # a is now a child of c: c -> b -> a -> c
    with pytest.raises(BlockDeviceError, match="loop in the differencing chain"):
        VhdImage(c, read_only=True)
    # a resolver pointing a disk at itself is a loop too, not a hang
    with pytest.raises(BlockDeviceError, match="loop"):
        VhdImage(b, parent_resolver=lambda child, cands: child)


def test_parent_resolver_overrides_the_locators(tmp_path: Path) -> None:
    par, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make_parent(par)
    create_vhd(child, None, "differencing", parent=par)
    elsewhere = tmp_path / "copy.vhd"
    shutil.copy2(par, elsewhere)  # keeps mtime, same unique id
    os.unlink(par)
    seen: list[tuple[str, list[str]]] = []

    def resolver(child_path: str, cands: list[str]) -> str:
        seen.append((child_path, cands))
        return str(elsewhere)

    with VhdImage(child, parent_resolver=resolver) as d:
        assert d.chain == [str(child), str(elsewhere)] and d.read(0, 2) == b"PP"
    assert seen[0][0] == str(child) and str(par) in seen[0][1]


def test_parent_size_mismatch_is_refused(tmp_path: Path) -> None:
    par, child, other = tmp_path / "p.vhd", tmp_path / "c.vhd", tmp_path / "o.vhd"
    make_parent(par)
    create_vhd(child, None, "differencing", parent=par)
    create_vhd(other, 2 * MiB, "dynamic")
    uid = Footer.unpack(par.read_bytes()[-512:]).unique_id
    with open(other, "rb+") as f:  # same identity as the parent, another size
        for pos in (0, other.stat().st_size - 512):
            f.seek(pos)
            ft = Footer.unpack(f.read(512))
            ft.unique_id = uid
            f.seek(pos)
            f.write(ft.pack())
    st = par.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BlockDeviceError, match="is 2097152 bytes, the child 1048576"):
        VhdImage(child, parent_resolver=lambda c, cands: str(other))
