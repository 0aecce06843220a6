"""The cell pipe: a pipe whose two ends are cells of the cell network."""
