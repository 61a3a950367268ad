"""The distribution installs only the da3_plugins namespace."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_only_the_da3_plugins_namespace(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("da3_plugins-*.whl")
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
