"""Shared test set-up.

The fixtures plugin authors use (`fl_job`, `fl_simulator`, `fl_no_threads_left`)
are ours too; pytest loads them through fl-core's `pytest11` entry point, as it
does for any plugin package, so nothing is declared here.
"""
