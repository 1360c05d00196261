"""vsp layer: the host side of synthetic devices (see DESIGN.md)."""
