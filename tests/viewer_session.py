"""The nerfstudio viewer on a trained da3-splat run, as ``ns-viewer --load-config`` starts it, on
127.0.0.1, with one addition for the browser test: every browser that connects is put at the
first training camera (as a click on its frustum does), and once the viewer has rendered for
it, the model's own render from that same camera state is saved as the reference.

    python tests/viewer_session.py CONFIG PORT OUT_DIR

Writes ``OUT_DIR/ready`` when serving, ``OUT_DIR/reference.png`` (the model's render through our
core rasteriser from the browser's camera) and ``OUT_DIR/camera.json``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def main(config_path: str, port: int, out: str) -> None:
    import numpy as np
    import torch
    import viser.transforms as vtf
    from nerfstudio.utils.eval_utils import eval_setup  # first: nerfstudio's own import order
    from nerfstudio.utils import writer
    from nerfstudio.viewer.utils import get_camera
    from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO, Viewer
    from PIL import Image

    out_dir = Path(out)
    config, pipeline, _, step = eval_setup(Path(config_path), test_mode="test")
    config.viewer.websocket_host = "127.0.0.1"
    config.viewer.websocket_port = port
    viewer = Viewer(config.viewer, log_filename=out_dir / "viewer_log.txt",
                    datapath=pipeline.datamanager.get_datapath(), pipeline=pipeline, train_lock=threading.Lock())
    config.logging.local_writer.enable = False
    writer.setup_local_writer(config.logging, max_iter=config.max_num_iterations, banner_messages=viewer.viewer_info)
    viewer.init_scene(train_dataset=pipeline.datamanager.train_dataset, train_state="completed",
                      eval_dataset=pipeline.datamanager.eval_dataset)
    viewer.update_scene(step=step)
    viewer.set_camera_visibility(False)  # no frusta over the comparison

    cams = pipeline.datamanager.train_dataset.cameras
    c2w = np.concatenate([cams.camera_to_worlds[0].numpy(), [[0, 0, 0, 1]]], 0)
    fov = float(2 * np.arctan(cams.cy[0].item() / cams.fy[0].item()))

    def place(client) -> None:
        time.sleep(1.0)  # the client's own first camera message comes first
        with client.atomic():
            client.camera.position = c2w[:3, 3] * VISER_NERFSTUDIO_SCALE_RATIO
            client.camera.wxyz = (vtf.SO3.from_matrix(c2w[:3, :3]) @ vtf.SO3.from_x_radians(np.pi)).wxyz
            client.camera.fov = fov
        time.sleep(3.0)  # the browser answers with its camera (and aspect): the viewer renders it
        state = viewer.get_camera_state(client)
        h = 512
        w = int(round(h * state.aspect))
        camera = get_camera(state, h, w)
        with torch.no_grad():
            outputs = pipeline.model.get_outputs_for_camera(camera.to(pipeline.device))
        rgb = (outputs["rgb"].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        Image.fromarray(rgb).save(out_dir / "reference.png")
        (out_dir / "camera.json").write_text(json.dumps({"c2w": state.c2w.tolist(), "fov": state.fov,
                                                         "aspect": state.aspect}))

    viewer.viser_server.on_client_connect(lambda client: threading.Thread(target=place, args=(client,),
                                                                          daemon=True).start())
    (out_dir / "ready").write_text(str(port))
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
