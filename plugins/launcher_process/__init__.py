"""The process launcher: a job runs as a local process group that cannot outlive its parent."""
