"""Shared test set-up: the fixtures plugin authors use are ours too."""

pytest_plugins = ["fl_core.testing.fixtures"]
