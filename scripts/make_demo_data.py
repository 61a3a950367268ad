"""Render the bundled demo photos (da3_plugins/data/demo/) from a synthetic scene.

    python scripts/make_demo_data.py

Six 252 x 336 views of a room with objects (a scene the embedded model never saw in
training: the training pool draws its scene seeds at random from [0, 2^31)).  The true
cameras are written beside them as cameras.json (docs/training-data.md format) so that the
demo result can be compared with the truth.
"""

import json
from pathlib import Path

from PIL import Image

from da3_plugins.core.synthetic import make_scene

OUT = Path(__file__).resolve().parents[1] / "da3_plugins" / "data" / "demo"


RECIPE = {"kind": "room", "num_views": 6, "height": 252, "width": 336, "seed": 5}
"""make_scene's arguments, written to cameras.json ("synthetic"): `da3p demo` regenerates the true
scene from them to measure its fused points against the true surface."""


def main() -> None:
    scene = make_scene(**RECIPE)
    OUT.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, img in enumerate(scene.images):
        name = f"view_{i:02d}.png"
        Image.fromarray(img).save(OUT / name, optimize=True)
        frames.append({"image": f"{name}", "K": scene.intrinsics[i].tolist(), "w2c": scene.extrinsics[i][:3].tolist()})
    (OUT / "cameras.json").write_text(json.dumps({"frames": frames, "synthetic": RECIPE}, indent=1) + "\n")
    print(f"wrote {len(frames)} views to {OUT}")


if __name__ == "__main__":
    main()
