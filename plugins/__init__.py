"""Built-in plugins of fl-core; each sub-package registers itself via entry points."""
