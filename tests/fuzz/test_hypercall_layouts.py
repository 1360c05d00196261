"""One table of hypercall layouts: the dispatch table's input sizes (the decoder), the
tracer's field layouts and the fuzzer's structured inputs describe the same headers."""

from __future__ import annotations

import struct

from hyperv_emu.fuzz import ops as O
from hyperv_emu.fuzz.hypercalls import FIELD_VALUES, HypercallTarget, structured_input
from hyperv_emu.hypervisor import hvdef as H
from hyperv_emu.hypervisor.observe_decode import INPUT_LAYOUTS, input_fields


def test_tracer_fields_lie_inside_the_decoders_input_header() -> None:
    specs = HypercallTarget()._build()["table"].specs
    checked = 0
    for code, fields in INPUT_LAYOUTS.items():
        spec = specs.get(code)
        if spec is None or spec.variable_header:
            continue
        for name, off, fmt in fields:
            assert off + struct.calcsize(fmt) <= spec.input_size, (spec.name, name)
        checked += 1
    assert checked >= 10


def test_structured_input_sets_the_layout_fields() -> None:
    spec = HypercallTarget()._build()["table"].specs[H.HvCallPostMessage]
    # One pick per field: connection_id <- SELF (pick 0), message_type <- 1 (pick 2),
    # payload_size kept fuzzed (pick >= C0h); then the header bytes.
    data = bytes([0, 2, 0xC0]) + bytes((i + 1) & 0xFF for i in range(spec.input_size))
    block = structured_input(spec, O.Reader(data), 0)
    assert len(block) == spec.input_size
    fields = input_fields(H.HvCallPostMessage, block)
    assert fields["connection_id"] == FIELD_VALUES[0] & 0xFFFF_FFFF
    assert fields["message_type"] == FIELD_VALUES[2]
    assert fields["payload_size"] == int.from_bytes(bytes(range(13, 17)), "little")
