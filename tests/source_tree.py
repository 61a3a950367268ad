"""The repository's source tree as the installed package sees it (a test helper).

``pyproject.toml`` maps the top-level folders into the ``da3_plugins`` namespace; these helpers
name every module of the repository by its import path and read the imports it makes.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set

ROOT = Path(__file__).resolve().parents[1]

# folder of the repository -> the package it is installed as
PACKAGE_ROOTS = {"da3_plugins": "da3_plugins", "core": "da3_plugins.core", "nerfstudio_method": "da3_plugins.nerfstudio"}


def python_files(folder: Path) -> Iterator[Path]:
    """Every .py file under ``folder`` (caches left out), in a stable order."""
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path


def project_modules() -> Dict[str, Path]:
    """Import name -> file of every module of the installed namespace (packages by their
    ``__init__.py``), e.g. ``da3_plugins.core.training.loop`` -> ``core/training/loop.py``."""
    out: Dict[str, Path] = {}
    for folder, package in PACKAGE_ROOTS.items():
        for path in python_files(ROOT / folder):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def imported_modules(name: str, path: Path, modules: Set[str]) -> Set[str]:
    """The project modules that module ``name`` (file ``path``) imports anywhere in its code,
    inside functions too, with relative imports resolved.

    ``from M import x`` counts as importing ``M.x`` when that is a module and ``M`` otherwise;
    it also counts ``M`` itself when ``M`` is a package other than one the importer lives in
    (Python runs that package's ``__init__`` first).
    """
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]  # the importer's package
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                    if not name.startswith(source + ".") and name != source:
                        found.add(source)
                else:
                    found.add(source)
    return {m for m in found if m in modules and m != name}
