"""Build the Blender extension zip from ``blender_addon/`` (``da3p blender build``).

The core's numpy-only modules (``conventions.py``, ``quaternions.py``, ``points.py``,
``seeds.py``, ``reconstruction.py``, ``scene_io.py``, ``metric_scale.py``) and pure-Python
modules (``errors.py``, ``options.py``, ``model_source.py``) are copied into the extension's
``_vendor/`` unchanged: one source of truth for the scene file, the camera conventions, the
reconstruction options and what a model name means.  The zip has the manifest at its root,
as Blender's extension installer expects.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"
VENDORED = ("conventions.py", "quaternions.py", "points.py", "seeds.py", "reconstruction.py", "scene_io.py",
            "metric_scale.py", "errors.py", "options.py", "model_source.py")


def _manifest_field(text: str, key: str) -> str:
    m = re.search(rf'^{key}\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise ValueError(f"{ADDON / 'blender_manifest.toml'}: no {key}")
    return m.group(1)


def build_extension(output_dir: os.PathLike = ROOT / "dist", source: Optional[Path] = None) -> Path:
    """Write ``<id>-<version>.zip`` into ``output_dir``; returns its path."""
    src = Path(source or ADDON)
    manifest = src / "blender_manifest.toml"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: missing (build from a clone of the da3-plugins repository)")
    text = manifest.read_text()
    name = f"{_manifest_field(text, 'id')}-{_manifest_field(text, 'version')}.zip"
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(src.rglob("*")):
                rel = path.relative_to(src)
                if path.is_dir() or "__pycache__" in rel.parts or rel.name == "README.md" or rel.suffix == ".zip":
                    continue
                zf.write(path, rel.as_posix())
            zf.writestr("_vendor/__init__.py",
                        '"""Numpy-only and pure-Python modules of da3_plugins.core, copied unchanged by the build."""\n')
            for module in VENDORED:
                zf.write(ROOT / "core" / module, f"_vendor/{module}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


if __name__ == "__main__":  # pragma: no cover
    print(build_extension())
