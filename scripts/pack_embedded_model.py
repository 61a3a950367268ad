"""Pack a training run as the embedded model (da3_plugins/data/da3-tiny) and evaluate it.

    python scripts/pack_embedded_model.py runs/da3-tiny

When the run was a fine-tune of another run (``--init`` a run folder with its own
train_state.json), that run's steps and config are recorded too ("base"); a run-folder
``init`` is recorded relative to the parent of ``run`` (no machine paths in the package).

Writes config.json + model.safetensors (float16: half the size; loaded back as float32) and
eval.json: the `da3p eval` table on 24 held-out synthetic scenes next to the baselines, and
("families") the per-family tables of `da3p eval --family all --size 126x168,378x504` on
FAMILY_SCENES scenes of 4 views per family and size (issue 19: the shipped model must beat both
baselines on every held-out family at 168 and 504 px).
"""

import json
import os
import sys
from pathlib import Path

import torch

from da3_plugins.core import load_model
from da3_plugins.core.evaluation import FAMILIES, evaluate, family_scenes, family_table, heldout_scenes

DEST = Path(__file__).resolve().parents[1] / "da3_plugins" / "data" / "da3-tiny"
MAX_BYTES = 15 * 1024 * 1024
FAMILY_SCENES = 6
FAMILY_SIZES = ((126, 168), (378, 504))


def main(run: str) -> None:
    model = load_model(run, device="cpu")
    model.save_pretrained(DEST, dtype=torch.float16)
    size = (DEST / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{DEST}/model.safetensors is {size / 2**20:.1f} MB, over the 15 MB budget")
    state = json.loads((Path(run) / "train_state.json").read_text())
    training = {"steps": state["step"], "config": state["config"]}
    init = state["config"].get("init")
    if init and Path(init).is_dir():
        if (Path(init) / "train_state.json").is_file():
            base = json.loads((Path(init) / "train_state.json").read_text())
            training["base"] = {"steps": base["step"], "config": base["config"]}
        training["config"] = {**state["config"], "init": os.path.relpath(init, Path(run).parent)}
    packed = load_model("embedded", device="cpu")
    table = evaluate(packed, heldout_scenes(24, views=4), name="da3-tiny (embedded)")
    families = []
    for family in FAMILIES:
        for h, w in FAMILY_SIZES:
            t = evaluate(packed, family_scenes(family, FAMILY_SCENES, views=4, height=h, width=w),
                         name="da3-tiny (embedded)")
            families.append({"family": family, "size": f"{h}x{w}", "scenes": FAMILY_SCENES, **t.to_json(),
                             "table": t})
    (DEST / "eval.json").write_text(json.dumps({
        "scenes": "24 held-out synthetic scenes (seed 1000), 4 views each, 126x168",
        "training": training,
        **table.to_json(),
        "families": [{k: v for k, v in f.items() if k != "table"} for f in families]}, indent=2) + "\n")
    print(f"packed {run} -> {DEST} ({size / 2**20:.1f} MB)")
    print(table.format())
    print(family_table([(f["family"], f["size"], f["table"]) for f in families]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/da3-tiny")
