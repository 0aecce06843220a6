"""Maps the source folders onto their import names.

`core/` installs as `fl_core` and `plugins/` as `fl_plugins`; setuptools'
package discovery cannot rename, so the package list is derived here from the
folders (every folder with an `__init__.py`), never maintained by hand.
"""

from setuptools import find_packages, setup


def _mapped(folder: str, name: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(packages=_mapped("core", "fl_core") + _mapped("plugins", "fl_plugins"))
