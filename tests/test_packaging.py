"""The distribution installs only the da3_plugins namespace, with every module of the repository."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from source_tree import project_modules

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from this checkout (once for the module)."""
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, cwd=out,
    )
    assert res.returncode == 0, res.stderr
    (path,) = out.glob("da3_plugins-*.whl")
    return path


def test_wheel_has_only_the_da3_plugins_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"da3_plugins"}, tops
    assert "da3_plugins/core/model/network.py" in names
    # the embedded model and the demo photos travel with the wheel (make demo works offline)
    for data in ("data/da3-tiny/model.safetensors", "data/da3-tiny/config.json", "data/demo/view_00.png",
                 "data/demo/cameras.json"):
        assert f"da3_plugins/{data}" in names, data
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["da3_plugins"]


def test_editable_install_maps_core_into_the_namespace():
    import da3_plugins.core

    assert Path(da3_plugins.core.__file__).resolve().parent == ROOT / "core"


def test_wheel_holds_every_module_of_the_repository(wheel):
    """Every .py file under core/, da3_plugins/ and nerfstudio_method/ is in the wheel at its
    da3_plugins.* path (a new package missing from pyproject's ``packages`` fails here)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {}
    for module, path in project_modules().items():
        inside = module.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
        expected[inside] = path.relative_to(ROOT)
    assert len(expected) > 40  # the mapping found the source tree
    missing = sorted(f"{source} (as {inside})" for inside, source in expected.items() if inside not in names)
    assert not missing, f"modules missing from the wheel: {missing}"
