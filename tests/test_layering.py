"""Axis flips and half-pixel shifts live in ``core/conventions.py`` only.

Every frame change of the project (OpenCV <-> OpenGL / Blender / glTF axes) and every pixel-centre
shift (continuous coordinates, centres at +0.5, <-> integer centres) is a function of the
conventions module.  This test scans the source (code only: strings and comments are blanked)
for the usual ways of writing one by hand and fails on any hit outside that module, except
for the few justified places in :data:`ALLOWED`, each with its reason.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("core", "da3_plugins", "blender_addon", "nerfstudio_method")
HOME = Path("core/conventions.py")

_ONE = r"1(?:\.0*)?"
_NEG = r"-\s*1(?:\.0*)?"
_COORD = r"(?:u|v|uu|vv|col|cols|row|rows|px|py|uv|xy|pix\w*|grid\w*|cx|cy)"

AXIS_FLIP = {
    "diag(1, -1, ...)": re.compile(rf"diag\(\s*\[?\s*{_ONE}\s*,\s*{_NEG}"),
    "[1, -1, -1]": re.compile(rf"[\[(]\s*{_ONE}\s*,\s*{_NEG}\s*,\s*{_NEG}\s*[\])]"),
    "negated y/z columns": re.compile(r"\[[^\]\n]*\b[12]\s*(?::\s*3)?\s*\]\s*\*=?\s*" + _NEG),
    "negated y/z columns (assigned)": re.compile(r"\[[^\]\n]*\b[12]\s*(?::\s*3)?\s*\]\s*=\s*-\s*\w+\[[^\]\n]*\b[12]\s*(?::\s*3)?\s*\]"),
}
HALF_PIXEL = {
    "grid + 0.5": re.compile(r"arange\([^)\n]*\)\s*[+-]\s*0?\.5\b"),
    "coordinate +- 0.5": re.compile(rf"\b{_COORD}\b(?:\s*\*\s*\w+)?\s*[+-]\s*0?\.5\b(?!\s*\*)"),
    "0.5 + coordinate": re.compile(rf"\b0?\.5\s*\+\s*{_COORD}\b"),
    "principal point +- 0.5": re.compile(r"\[\s*(?:\.\.\.|:)\s*,\s*[01]\s*,\s*2\s*\]\s*[+-]=\s*0?\.5\b"),
    "projected coordinate +- 0.5": re.compile(r"/\s*\w+\[[^\]\n]*\]\s*[+-]\s*0?\.5\b"),
}

# (file, a piece of the offending line, why it is not a conventions function)
ALLOWED = [
    ("core/model/gaussians.py", "torch.arange(n, dtype=torch.float64) + 0.5",
     "not a pixel: the Fibonacci-sphere sample index i + 1/2 of the SH fitting directions"),
    ("core/model/gaussians.py", "device=device, dtype=dtype) + 0.5) /",
     "parity: the Gaussian adapter's pixel-centre grid in torch, normalised to (0, 1), as the network was trained"),
    ("core/posegraph.py", "k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]",
     "not an axis flip: the skew-symmetric (hat) matrix of a rotation vector, the Lie algebra of SO(3)"),
    ("core/render.py", "device=device, dtype=dtype) + 0.5",
     "the torch rasteriser's per-tile pixel centres (conventions is numpy-only; same +0.5 centres)"),
]


def _code_lines(path: Path):
    """(line number, code) of a Python file, with its strings and comments blanked out."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    chars = [list(line) for line in lines]
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in (tokenize.STRING, tokenize.COMMENT):
            continue
        (r0, c0), (r1, c1) = tok.start, tok.end
        for r in range(r0, r1 + 1):
            row = chars[r - 1]
            a = c0 if r == r0 else 0
            b = c1 if r == r1 else len(row)
            row[a:b] = " " * (b - a)
    return [(i + 1, "".join(row)) for i, row in enumerate(chars)]


def _hits(rules, root: Path = ROOT):
    found = []
    for folder in SCANNED:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root)
            if rel == HOME or "__pycache__" in rel.parts:
                continue
            for number, code in _code_lines(path):
                for name, pattern in rules.items():
                    if pattern.search(code) and not _allowed(rel, code):
                        found.append(f"{rel}:{number}: {name}: {code.strip()}")
    return found


def _allowed(rel: Path, code: str) -> bool:
    return any(rel.as_posix() == f and piece in code for f, piece, _ in ALLOWED)


@pytest.mark.parametrize("rules", [AXIS_FLIP, HALF_PIXEL], ids=["axis-flip", "half-pixel"])
def test_flips_and_half_pixels_only_in_conventions(rules):
    hits = _hits(rules)
    assert not hits, ("written outside core/conventions.py (use a conventions function, or add the place to "
                      "ALLOWED with a reason):\n" + "\n".join(hits))


@pytest.mark.parametrize("line", [
    "flip = np.diag([1.0, -1.0, -1.0, 1.0])",
    "c2w[:, :3, 1:3] *= -1",
    "pose[..., 2] *= -1",
    "p = p * np.array([1, -1, -1])",
    "u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)",
    "u = uvw[:, 0] / uvw[:, 2] - 0.5",
    "k[..., 0, 2] -= 0.5",
    "uv = (cols * stride + 0.5) / width",
])
def test_the_scan_catches_a_flip_or_shift_written_by_hand(tmp_path, line):
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text(f"import numpy as np\n{line}\n")
    for folder in SCANNED[1:]:
        (tmp_path / folder).mkdir()
    assert _hits({**AXIS_FLIP, **HALF_PIXEL}, root=tmp_path), line


def test_the_allow_list_names_real_places():
    for f, piece, reason in ALLOWED:
        assert (ROOT / f).is_file() and reason
        assert piece in (ROOT / f).read_text(encoding="utf-8")
