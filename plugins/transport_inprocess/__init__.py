"""The in-process transport: links cells of one process by direct calls (simulator)."""
