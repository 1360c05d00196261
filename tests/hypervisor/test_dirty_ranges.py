"""The write hook of dirty-page tracking leaves out the pages copied back at every reset."""

from __future__ import annotations

from hyperv_emu.hypervisor.dirty import _ranges_without


def test_ranges_without_cuts_out_whole_pages() -> None:
    assert _ranges_without(0, 0x100000, {0x1E}) == [(0, 0x1DFFF), (0x1F000, 0xFFFFF)]
    assert _ranges_without(0, 0x2000, set()) == [(0, 0x1FFF)]
    assert _ranges_without(0, 0x2000, {0, 1}) == []
    # Pages outside the range, or at its edges, cut only what lies inside it.
    assert _ranges_without(0x1000, 0x3000, {0, 2, 9}) == [(0x1000, 0x1FFF)]
    assert _ranges_without(0x1800, 0x2800, {1}) == [(0x2000, 0x27FF)]
