"""An evaluation-only workflow: one task to every site, metrics averaged, model unchanged."""
