"""debug layer (see DESIGN.md)."""
