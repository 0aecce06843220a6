"""A site's own config: what the site allows, whatever the server asks.

A client parent reads `<site workspace>/site.yaml` if there is one:

    launchers: [docker]     # the launchers a job may use here to start its
                            # training processes (default: any installed)

A job names its launcher in `components.launcher` (`process` when it names
none). A job whose launcher the site does not allow is refused when it is
deployed there, and the refusal, naming this file, reaches the job's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fl_core.config._checks import Checker, describe, join, read_yaml_file
from fl_core.config.job import JobConfig

SITE_FILE: Final = "site.yaml"
DEFAULT_LAUNCHER: Final = "process"
"""The launcher of a job that names none."""


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """A site's own rules; `launchers` None allows every launcher."""

    source: Path
    launchers: tuple[str, ...] | None = None

    def refusal(self, job: JobConfig) -> str | None:
        """Why this site will not run `job`, or None if it will."""
        choice = job.components.get("launcher")
        launcher = choice.name if choice is not None else DEFAULT_LAUNCHER
        if self.launchers is not None and launcher not in self.launchers:
            allowed = ", ".join(self.launchers) or "none"
            return (
                f"launcher {launcher!r} is not allowed on this site "
                f"(allowed: {allowed}; see {self.source})"
            )
        return None


def load_site_config(folder: Path) -> SiteConfig:
    """The site config in `folder` (its `site.yaml`); no file allows everything."""
    source = folder / SITE_FILE
    if not source.exists():
        return SiteConfig(source)
    data = read_yaml_file(source, "cannot read the file: not a regular file")
    check = Checker(str(source))
    top = check.mapping(data if data is not None else {}, "", ("launchers",), what="a site mapping")
    launchers: tuple[str, ...] | None = None
    if "launchers" in top:
        raw = top["launchers"]
        if not isinstance(raw, list):
            raise check.error(
                "launchers", f"expected a list of launcher names, got {describe(raw)}"
            )
        launchers = tuple(
            check.plugin_name(name, join("launchers", index)) for index, name in enumerate(raw)
        )
    return SiteConfig(source, launchers)
