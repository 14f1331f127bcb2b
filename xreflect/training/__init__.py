"""Grid training of the two-tower model (see grid.py for the protocol)."""
