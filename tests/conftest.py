"""Shared test set-up.

The fixtures plugin authors use (`fl_job`, `fl_simulator`, `fl_no_threads_left`)
are ours too; pytest loads them through fl-core's `pytest11` entry point, as it
does for any plugin package, so nothing is declared here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

REAL_PROCESS_MODULES = {
    # Each starts training scripts, peer processes or the CLI as real processes,
    # or pushes huge models through real sockets: seconds each. `make test`
    # runs them; `make test-fast` (-m "not e2e") leaves them out.
    "roles/client_job/test_process_executor.py",
    "cli/test_cli.py",
    "cli/test_cli_poc.py",
    "cli/test_cli_kits.py",
    "plugins/pipe_cell/test_pipe_cell.py",
    "plugins/pipe_file/test_pipe_file.py",
    "plugins/transport_tcp/test_tcp_tls.py",
    "plugins/launcher_process/test_launcher_process.py",
    "cell/test_direct_links.py",
    "testing/test_pytest_plugin.py",
    "testing/test_transport_contract_grpc.py",
    "testing/test_transport_contract_tcp.py",
    "thirdparty_transport/tests/test_uds_contract.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the modules above `e2e`, as tests/e2e marks its own."""
    missing = sorted(m for m in REAL_PROCESS_MODULES if not (HERE / m).is_file())
    if missing:
        raise pytest.UsageError(f"tests/conftest.py names modules that do not exist: {missing}")
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if path.is_relative_to(HERE) and path.relative_to(HERE).as_posix() in REAL_PROCESS_MODULES:
            item.add_marker(pytest.mark.e2e)
