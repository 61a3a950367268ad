"""Pack a training run as the embedded model (da3_plugins/data/da3-tiny) and evaluate it.

    python scripts/pack_embedded_model.py runs/da3-tiny

When the run was a fine-tune of another run (``--init`` a run folder with its own
train_state.json), that run's steps and config are recorded too ("base"); a run-folder
``init`` is recorded relative to the parent of ``run`` (no machine paths in the package).

Writes config.json + model.safetensors (float16: half the size; loaded back as float32) and
eval.json: the `da3p eval` table on 24 held-out synthetic scenes next to the baselines.
"""

import json
import os
import sys
from pathlib import Path

import torch

from da3_plugins.core import load_model
from da3_plugins.core.evaluation import evaluate, heldout_scenes

DEST = Path(__file__).resolve().parents[1] / "da3_plugins" / "data" / "da3-tiny"
MAX_BYTES = 20 * 1024 * 1024


def main(run: str) -> None:
    model = load_model(run, device="cpu")
    model.save_pretrained(DEST, dtype=torch.float16)
    size = (DEST / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{DEST}/model.safetensors is {size / 2**20:.1f} MB, over the 20 MB budget")
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
    (DEST / "eval.json").write_text(json.dumps({
        "scenes": "24 held-out synthetic scenes (seed 1000), 4 views each, 126x168",
        "training": training,
        **table.to_json()}, indent=2) + "\n")
    print(f"packed {run} -> {DEST} ({size / 2**20:.1f} MB)")
    print(table.format())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/da3-tiny")
