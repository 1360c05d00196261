"""The layering contract of DESIGN.md, checked on the package's import statements.

Every ``import`` and ``from ... import`` in ``hyperv_emu/`` (at module level, inside functions,
and under ``TYPE_CHECKING``) becomes an edge from the importing module to the imported one; the
rules below name the edges DESIGN.md forbids.  A rule broken fails with the file, line and edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import hyperv_emu

PACKAGE = Path(hyperv_emu.__file__).parent
HV = "hyperv_emu.hypervisor"

#: The TLFS's numbers (call codes, HV_STATUS values, MSR and port types): a wire format
#: declared once (DESIGN.md), pure data, so every layer that speaks it may use it.
WIRE_FORMATS = {f"{HV}.hvdef"}

#: Modules above ``vid/`` that may still import ``hypervisor/`` directly, and why.
HYPERVISOR_CLIENTS = {
    # The guest side (DESIGN.md vsc/): Python code acting as guest code on a VP, issuing
    # hypercalls and reading SynIC pages as a guest does, so it uses the guest's interface to
    # the hypervisor (hypercall encoding, SynIC flags, the VP it runs on), not the parent's.
    "hyperv_emu.vsc.client": "guest side of VMBus",
    "hyperv_emu.vsc.guest": "guest side of VMBus",
    # The debugger subscribes to the hypervisor's event stream (hypervisor/observe.py) and
    # single-steps VPs: what it debugs is the hypervisor's view of the guest.
    "hyperv_emu.debug.step": "hypervisor debugger",
    "hyperv_emu.debug.trace": "hypervisor event tracer",
    # Fuzz targets whose code under test is a hypervisor piece: the hypercall table, the local
    # APIC (a hypervisor-owned chip), and a minimal SynIC partition assembled piece by piece
    # for per-input speed (install_hyperv on a bare Partition, one VP snapshot).
    "hyperv_emu.fuzz.hypercalls": "fuzzes the hypercall interface",
    "hyperv_emu.fuzz.chipset": "fuzzes the local APIC among the chips",
    "hyperv_emu.fuzz.vmbus_targets": "builds a bare SynIC partition to fuzz VMBus on",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _edges() -> Iterator[tuple[str, str, int, Path]]:
    """(importer, imported module, line, file) for every import in the package; ``from X
    import y`` yields ``X.y`` when that is a module, so ``from hyperv_emu.hypervisor import
    hvdef`` counts as an edge to ``hyperv_emu.hypervisor.hvdef``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield importer, alias.name, node.lineno, path
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py")
                    yield importer, sub if is_module.exists() else module, node.lineno, path


EDGES = list(_edges())


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _broken(rule: str, edges: list[tuple[str, str, int, Path]]) -> str:
    return rule + ":\n" + "\n".join(f"  {p.relative_to(PACKAGE.parent)}:{line}: {a} -> {b}"
                                    for a, b, line, p in edges)


def test_the_import_walk_sees_the_package() -> None:
    """The walk finds the edges it is meant to judge (a broken walk would pass every rule)."""
    pairs = {(a, b) for a, b, _, _ in EDGES}
    assert ("hyperv_emu.vid.vm", f"{HV}.partition") in pairs
    assert ("hyperv_emu.vsc.client", f"{HV}.hvdef") in pairs  # `from pkg import module`
    assert any(_within(a, HV) and _within(b, "unicorn") for a, b in pairs)


def test_only_the_hypervisor_imports_unicorn() -> None:
    bad = [e for e in EDGES if _within(e[1], "unicorn") and not _within(e[0], HV)]
    assert not bad, _broken("unicorn imported outside hypervisor/", bad)


#: Modules outside every layer that hypervisor/ may use with the layers above it: leaves that
#: import nothing from the package, so no layer reaches another through them.
NEUTRAL = {
    "hyperv_emu.clock": "the one virtual clock (DESIGN.md, One clock)",
    "hyperv_emu.disasm": "the lazy capstone disassemblers (blockmark and the debugger)",
}


def test_the_hypervisor_imports_no_layer_above_it() -> None:
    """hypervisor/ uses only itself and the neutral leaves: the one virtual clock
    (hyperv_emu/clock.py) and the disassemblers (hyperv_emu/disasm.py)."""
    bad = [e for e in EDGES if _within(e[0], HV) and _within(e[1], "hyperv_emu")
           and not _within(e[1], HV) and e[1] not in NEUTRAL]
    assert not bad, _broken("hypervisor/ imports a layer above it", bad)


def test_the_neutral_modules_are_leaves() -> None:
    """A neutral module importing the package would let hypervisor/ reach a layer through it."""
    bad = [e for e in EDGES if e[0] in NEUTRAL and _within(e[1], "hyperv_emu")]
    assert not bad, _broken("a neutral module imports the package", bad)


def test_devices_never_see_the_hypervisor_or_the_worker() -> None:
    """A VDev gets lines, buses and the clock from the board; it never imports hypervisor/,
    vid/ or worker/ (DESIGN.md: they meet in worker/)."""
    bad = [e for e in EDGES if _within(e[0], "hyperv_emu.vdev")
           and any(_within(e[1], p) for p in (HV, "hyperv_emu.vid", "hyperv_emu.worker"))]
    assert not bad, _broken("vdev/ imports hypervisor/, vid/ or worker/", bad)


def test_layers_above_vid_reach_the_hypervisor_only_through_vid() -> None:
    """worker/, vmms/, vsp/, vmbus/, the CLI and the rest use vid/ (VmPartition, RootPartition
    and its re-exports); only the listed clients and the TLFS numbers are exempt."""
    bad = [e for e in EDGES if _within(e[1], HV) and not _within(e[0], HV)
           and not _within(e[0], "hyperv_emu.vid") and e[0] not in HYPERVISOR_CLIENTS
           and not (e[1] in WIRE_FORMATS and not _within(e[0], "hyperv_emu.vdev"))]
    assert not bad, _broken("imports hypervisor/ instead of going through vid/", bad)


@pytest.mark.parametrize("client", sorted(HYPERVISOR_CLIENTS))
def test_every_exemption_is_still_needed(client: str) -> None:
    """An exempt module that no longer imports hypervisor/ leaves the list."""
    assert any(a == client and _within(b, HV) and b not in WIRE_FORMATS
               for a, b, _, _ in EDGES), f"{client} is exempt but needs no exemption"
