"""vdev layer (see DESIGN.md)."""
