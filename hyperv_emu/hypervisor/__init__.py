"""hypervisor layer (see DESIGN.md)."""
