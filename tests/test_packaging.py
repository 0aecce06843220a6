"""pyproject.toml builds without deprecation warnings on the setuptools it asks for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_license_is_an_spdx_string_and_the_build_asks_for_a_setuptools_that_knows_it() -> None:
    # A `{text = ...}` table made setuptools warn three times during `make demo`;
    # the SPDX string form needs setuptools >= 77.
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"
    requires = data["build-system"]["requires"]
    pins = [r for r in requires if r.startswith("setuptools")]
    assert len(pins) == 1
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", pins[0])
    assert match and int(match.group(1)) >= 77, pins
