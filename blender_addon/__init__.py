# SPDX-License-Identifier: GPL-3.0-or-later
"""Depth Anything 3 for Blender: import DA3 reconstructions (.npz scene files or scene folders:
pick the folder's scene.json) and reconstruct photos, image sequences and videos through a
``da3p worker`` process of the user's own Python environment.  A video (or an image sequence)
becomes one camera animated over its frames, with the footage as its background
(``footage.py``, also the Rescale operator); the sidebar's Reconstruct panel holds the settings.

The add-on needs only bpy and numpy (no torch); the scene-file reader, the camera
conventions, the reconstruction options and the model-name rules are the core's own numpy /
pure-Python modules, vendored into ``_vendor/`` by the build.
"""


import os
import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from ._vendor.model_source import DEFAULT_MODEL, EMBEDDED, classify_model_source
from .footage import DA3_OT_rescale
from .worker_client import ProgressClock
from ._vendor.options import (LOOP_CLOSURES, PRECISIONS, REF_VIEW_STRATEGIES, RESIZE_METHODS, ReconstructOptions,
                               option_defaults)


MAX_POINTS = 5_000_000
"""The default point budget of an import: a long shot at full resolution has hundreds of millions."""


class DA3_OT_import_scene(bpy.types.Operator, ImportHelper):
    """Import a Depth Anything 3 reconstruction (.npz, or a scene folder's scene.json): cameras with their photos, coloured points"""

    bl_idname = "import_scene.da3_npz"
    bl_label = "Import DA3 Reconstruction"
    bl_options = {"REGISTER", "UNDO", "PRESET"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz;scene.json", options={"HIDDEN"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    cameras: BoolProperty(name="Cameras", default=True, description="One camera per view with exact intrinsics")
    background: BoolProperty(name="Photos as Backgrounds", default=True,
                             description="Each camera shows its photo as background image")
    points: BoolProperty(name="Point Cloud", default=True)
    gaussians: BoolProperty(name="Gaussians", default=True,
                            description="DA3's 3D Gaussians (when the scene has them), previewed as coloured ellipsoids")
    depth_meshes: BoolProperty(name="Depth Meshes", default=False,
                               description="One mesh per view from its depth map, textured with its photo")
    mesh_every: IntProperty(name="Depth Mesh Every", default=1, min=1,
                            description="A depth mesh for every n-th view (keyframes of a video)")
    animated: BoolProperty(name="Animated Camera", default=True,
                           description="A scene made from a video or image sequence becomes one camera keyed on "
                                       "every frame, with the footage as its background; off: one camera per view")
    image_sequence: BoolProperty(name="Image Sequence", default=False,
                                 description="A scene made from numbered image files is footage too (one animated "
                                             "camera); off: numbered photos stay separate cameras")
    stride: IntProperty(name="Pixel Stride", default=1, min=1, max=64,
                        description="Use every n-th pixel of each depth map")
    max_points: IntProperty(name="Max Points", default=MAX_POINTS, min=0,
                            description="At most this many points (a uniform random subset: long shots); 0: all")
    threshold_mode: EnumProperty(
        name="Confidence", default="AUTO",
        items=[("AUTO", "Automatic", "The official percentile rule"), ("NONE", "Keep All", "Show every point"),
               ("VALUE", "Value", "Use the value below")])
    threshold: FloatProperty(name="Threshold", default=1.5, min=0.0)

    def execute(self, context):
        from ._vendor.reconstruction import Reconstruction, SceneFileError
        from .importer import build_scene

        path = Path(self.filepath)
        if path.name == "scene.json":  # a scene folder is picked by its scene.json
            path = path.parent
        start = time.perf_counter()
        try:
            rec = Reconstruction.load(path)
        except SceneFileError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        conf = {"AUTO": "auto", "NONE": None, "VALUE": self.threshold}[self.threshold_mode]
        try:
            coll = build_scene(rec, path.stem, context=context, cameras=self.cameras, points=self.points,
                               background=self.background, stride=self.stride, conf_threshold=conf,
                               depth_meshes=self.depth_meshes, gaussians=self.gaussians, animated=self.animated,
                               sequences=self.image_sequence, mesh_every=self.mesh_every,
                               max_points=self.max_points)
        except Exception as exc:  # report, leave the scene as it was (build_scene cleans up)
            self.report({"ERROR"}, f"{path.name}: import failed: {type(exc).__name__}: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {len(rec)} views of {path.name} into '{coll.name}' "
                              f"in {time.perf_counter() - start:.1f} s")
        return {"FINISHED"}

    def invoke(self, context, event):
        if self.filepath and Path(self.filepath).is_file():  # drag and drop
            return self.invoke_popup(context) if hasattr(self, "invoke_popup") else self.execute(context)
        return ImportHelper.invoke(self, context, event)


class DA3_FH_import_scene(bpy.types.FileHandler):
    bl_idname = "DA3_FH_import_scene"
    bl_label = "DA3 Reconstruction"
    bl_import_operator = "import_scene.da3_npz"
    bl_file_extensions = ".npz"

    @classmethod
    def poll_drop(cls, context):
        return context.area is not None and context.area.type == "VIEW_3D"


def _da3_points(context):
    obj = context.active_object
    if obj is not None and obj.modifiers.get("DA3 Points") is not None:
        return obj
    return None


class DA3_PT_display(bpy.types.Panel):
    bl_label = "Depth Anything 3"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DA3"

    def draw(self, context):
        layout = self.layout
        layout.operator(DA3_OT_import_scene.bl_idname, icon="IMPORT")
        layout.operator("da3.stop_worker", icon="CANCEL")
        obj = _da3_points(context)
        if obj is None:
            layout.label(text="Select an imported DA3 point cloud")
            if context.active_object is not None and "da3_footage" in context.active_object:
                layout.operator("da3.rescale", icon="DRIVER_DISTANCE")
            return
        mod = obj.modifiers["DA3 Points"]
        for item in mod.node_group.interface.items_tree:
            if getattr(item, "in_out", "") == "INPUT" and item.socket_type == "NodeSocketFloat":
                layout.prop(mod, f'["{item.identifier}"]', text=item.name)
        coll = obj.users_collection[0] if obj.users_collection else None
        if coll is not None:
            layout.label(text=f"Scale: {coll.get('da3_units', '?')}, model: {coll.get('da3_model', '?')}")
            layout.operator(DA3_OT_toggle_cameras.bl_idname, icon="CAMERA_DATA")
            layout.operator("da3.rescale", icon="DRIVER_DISTANCE")


class DA3_OT_toggle_cameras(bpy.types.Operator):
    """Show or hide the cameras of the active DA3 reconstruction"""

    bl_idname = "da3.toggle_cameras"
    bl_label = "Show/Hide Cameras"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        obj = _da3_points(context)
        if obj is None or not obj.users_collection:
            self.report({"ERROR"}, "Select an imported DA3 point cloud first")
            return {"CANCELLED"}
        cams = [o for o in obj.users_collection[0].objects if o.type == "CAMERA"]
        hide = not all(o.hide_get() for o in cams)
        for o in cams:
            o.hide_set(hide)
        return {"FINISHED"}


# --------------------------------------------------------------------------- worker

_WORKER = {"client": None}


def _prefs(context):
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def _client(context):
    from .worker_client import WorkerClient, find_executable

    prefs = _prefs(context)
    configured = prefs.executable if prefs is not None else ""
    device = prefs.device if prefs is not None else "auto"
    client = _WORKER["client"]
    if client is not None and client.alive:
        return client
    exe = find_executable(configured)
    _WORKER["client"] = client = WorkerClient(exe or configured, device=device)
    return client


def stop_worker() -> bool:
    client = _WORKER["client"]
    _WORKER["client"] = None
    if client is not None and client.alive:
        client.stop()
        return True
    return False


_DEFAULTS = option_defaults()
_LABELS = {"saddle_balanced": "Balanced", "saddle_sim_range": "Similarity Range", "fp32": "FP32 (exact)",
           "bf16": "BF16", "fp16": "FP16", "auto": "Auto", "int8": "INT8 (CPU)"}


def _enum_items(values):
    """EnumProperty items for a tuple of core option values (the identifiers are the values)."""
    return [(v, _LABELS.get(v, v.replace("_", " ").capitalize()), "") for v in values]


def _model_request(name: str) -> str:
    """The model to send to the worker, refused if it needs the network while Blender's online access is off.

    What the name is comes from the core's own rules (``classify_model_source``): only a hub
    id needs the network; ``embedded``, folders and files never do.  Empty means the
    official default (a hub id).  Raises ``ValueError`` (a one-line message) for bad names.
    """
    name = name.strip() or DEFAULT_MODEL
    if name.startswith("//"):  # relative to the .blend file
        name = bpy.path.abspath(name)
    source = classify_model_source(name)
    if source.needs_network and not bpy.app.online_access:
        raise ValueError(f"{name} would be downloaded, but Blender's online access is off "
                         f"(Preferences > System > Network); use a local model folder or '{EMBEDDED}'")
    return source.location


def _reconstruct_settings():
    """The reconstruction settings: the operator's properties, and the same on the scene
    (``scene.da3_reconstruct``) for the sidebar panel."""
    return {
        "model": StringProperty(name="Model", default="",
                                description=f"Model folder, .safetensors file, hub id (needs online access) or "
                                            f"'{EMBEDDED}' (the small offline demo model); empty: {DEFAULT_MODEL}"),
        "process_res": IntProperty(name="Resolution", default=_DEFAULTS["process_res"], min=14, max=2016, step=14),
        "process_res_method": EnumProperty(name="Resize", default=_DEFAULTS["process_res_method"],
                                           items=_enum_items(RESIZE_METHODS),
                                           description="How photos are resized or cropped to the network's input size"),
        "ref_view": EnumProperty(name="Reference View", default=_DEFAULTS["ref_view_strategy"],
                                 items=_enum_items(REF_VIEW_STRATEGIES)),
        "ray_pose": BoolProperty(name="Ray Pose", default=_DEFAULTS["use_ray_pose"],
                                 description="Cameras from the ray map"),
        "gaussians": BoolProperty(name="Gaussians", default=_DEFAULTS["infer_gs"],
                                  description="Predict 3D Gaussians (giant / nested)"),
        "precision": EnumProperty(name="Precision", default="auto", items=_enum_items(PRECISIONS),
                                  description="Backbone compute precision (auto: bf16 or fp16 on GPUs, fp32 on most "
                                              "CPUs; fp32 is exact; int8 is CPU only: faster, approximate)"),
        "threshold": FloatProperty(name="Confidence Threshold", default=0.0, min=0.0),
        "frame_stride": IntProperty(name="Frame Stride", default=1, min=1,
                                    description="Every n-th frame of a video or image sequence (when FPS is 0)"),
        "fps": FloatProperty(name="FPS", default=0.0, min=0.0,
                             description="Sample a video at this many frames per second; 0: use the frame stride"),
        "max_views": IntProperty(name="Views per Pass", default=0, min=0,
                                 description="Long inputs run in overlapping chunks of this many views "
                                             "(bounded memory); 0: from free memory"),
        "chunk_overlap": IntProperty(name="Chunk Overlap", default=0, min=0,
                                     description="Views shared by consecutive chunks; 0: automatic"),
        "loop_closure": EnumProperty(name="Loop Closure", default=_DEFAULTS["loop_closure"],
                                     items=_enum_items(LOOP_CLOSURES),
                                     description="Find places the camera returns to and close the loop"),
        "scale": FloatProperty(name="Scale", default=1.0, min=1e-6,
                               description="Multiply every length of the result (metric models already give "
                                           "metres; for the others, or use Rescale after import)"),
        "animated": BoolProperty(name="Animated Camera", default=True,
                                 description="A video becomes one camera keyed on every frame"),
        "image_sequence": BoolProperty(name="Image Sequence", default=False,
                                       description="The folder is an image sequence (numbered frames of one shot): "
                                                   "one animated camera too; off: separate cameras"),
        "create_cameras": BoolProperty(name="Cameras", default=True),
        "create_points": BoolProperty(name="Point Cloud", default=True),
        "create_depth_meshes": BoolProperty(name="Depth Meshes", default=False),
        "max_points": IntProperty(name="Max Points", default=MAX_POINTS, min=0,
                                  description="At most this many points (a uniform random subset: long shots); "
                                              "0: all"),
        "mesh_every": IntProperty(name="Depth Mesh Every", default=1, min=1,
                                  description="A depth mesh for every n-th view (keyframes of a video)"),
    }


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
"""As the core's ``images.IMAGE_EXTENSIONS`` / ``VIDEO_EXTENSIONS`` (not vendored: that module
needs PIL; tests/test_video_frames.py checks they agree)."""


def _every_nth_file(folder: str, stride: int):
    """Every ``stride``-th image file of a folder, in the core's order (``images.list_images``:
    natural order, img2 before img10)."""
    import re

    names = [f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
             and os.path.isfile(os.path.join(folder, f))]
    names.sort(key=lambda n: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", n)])
    return [os.path.join(folder, f) for f in names[::stride]]


def _video_rate(path: str) -> float:
    """A video's frames per second, read by Blender (a clip loaded and removed again)."""
    try:
        clip = bpy.data.movieclips.load(path)
    except RuntimeError:
        raise ValueError(f"{path}: Blender cannot read this video") from None
    try:
        return float(clip.fps)
    finally:
        bpy.data.movieclips.remove(clip)


class DA3ReconstructSettings(bpy.types.PropertyGroup):
    """What the sidebar's Reconstruct panel edits (``scene.da3_reconstruct``)."""

    source: StringProperty(name="Footage", subtype="FILE_PATH",
                           description="A video file, or a folder of photos or of an image sequence")
    __annotations__.update(_reconstruct_settings())


class DA3_OT_reconstruct(bpy.types.Operator):
    """Reconstruct a folder of photos, an image sequence or a video with DA3 in the worker process and import the result"""

    bl_idname = "da3.reconstruct"
    bl_label = "Reconstruct from Images"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Images", subtype="DIR_PATH", description="Folder of photos")
    filepath: StringProperty(name="Video", subtype="FILE_PATH", description="A video file instead of a folder")
    files: bpy.props.CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    use_panel: BoolProperty(name="Use Panel Settings", default=False, options={"HIDDEN", "SKIP_SAVE"},
                            description="Take the footage and every setting from the sidebar panel")
    __annotations__.update(_reconstruct_settings())

    _timer = None

    def _from_panel(self, context):
        settings = context.scene.da3_reconstruct
        for key in _reconstruct_settings():
            setattr(self, key, getattr(settings, key))
        src = bpy.path.abspath(settings.source) if settings.source else ""
        self.directory, self.filepath = (src, "") if os.path.isdir(src) else ("", src)

    def _request(self, context):
        import tempfile

        if self.use_panel:
            self._from_panel(context)
        picked = [os.path.join(self.directory, f.name) for f in self.files if f.name]
        src = self.filepath if self.filepath else self.directory
        fps = None
        if picked:
            inputs = [bpy.path.abspath(p) for p in picked]
            missing = [p for p in inputs if not os.path.isfile(p)]
            if missing:
                raise ValueError(f"no such file: {missing[0]}")
        elif not src or not os.path.exists(bpy.path.abspath(src)):
            raise ValueError(f"no such folder or video: {src or '(none given)'}")
        elif os.path.isdir(bpy.path.abspath(src)):
            folder = bpy.path.abspath(src)
            inputs = _every_nth_file(folder, self.frame_stride) if self.frame_stride > 1 else [folder]
            if not inputs:
                raise ValueError(f"{folder}: the folder holds no image files")
        elif not src.lower().endswith(VIDEO_EXTENSIONS):
            inputs = [bpy.path.abspath(src)]
        else:
            video = bpy.path.abspath(src)
            inputs = [video]
            if self.fps > 0:
                fps = float(self.fps)
            else:  # every frame_stride-th frame: sampled at rate / stride
                rate = _video_rate(video)
                if rate <= 0 and self.frame_stride > 1:
                    raise ValueError(f"{video}: the video declares no frame rate; set FPS instead of Frame Stride")
                fps = rate / self.frame_stride if rate > 0 else 1e6  # no rate: every frame
        model = _model_request(self.model)
        options = self.reconstruct_options().to_dict()
        self._tmp = tempfile.mkdtemp(prefix="da3_")
        self._source = src
        self._clock = ProgressClock()
        client = _client(context)
        extra = {} if fps is None else {"fps": fps}
        return client, client.request("reconstruct", inputs=inputs, output=os.path.join(self._tmp, "out"),
                                      export="scene", model=model, options=options, **extra)

    def reconstruct_options(self) -> ReconstructOptions:
        """The core's reconstruction options from the operator's settings (validated by the core)."""
        return ReconstructOptions(process_res=self.process_res, process_res_method=self.process_res_method,
                                  ref_view_strategy=self.ref_view, use_ray_pose=self.ray_pose,
                                  infer_gs=self.gaussians, precision=self.precision,
                                  max_views_per_pass=self.max_views or None,
                                  chunk_overlap=self.chunk_overlap or None, loop_closure=self.loop_closure)

    def _finish(self, context, event: dict):
        import shutil

        try:
            if event["event"] != "done":
                self.report({"ERROR"}, f"DA3 worker: {event.get('message', event)}")
                return {"CANCELLED"}
            from ._vendor.reconstruction import Reconstruction
            from .importer import build_scene

            rec = Reconstruction.load(event["files"]["scene"])
            if self.scale != 1.0:
                rec = rec.rescaled(self.scale)
            name = os.path.basename(os.path.normpath(self._source)) or "DA3"
            if rec.frames is not None:
                name = os.path.splitext(name)[0] or name
            build_scene(rec, name, context=context, conf_threshold=self.threshold or None,
                        cameras=self.create_cameras, points=self.create_points,
                        depth_meshes=self.create_depth_meshes, gaussians=self.gaussians, animated=self.animated,
                        sequences=self.image_sequence, mesh_every=self.mesh_every, max_points=self.max_points)
            self.report({"INFO"}, f"Reconstructed {len(rec)} views of {name}")
            return {"FINISHED"}
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def execute(self, context):
        # blocking path (scripts, background mode); the UI uses invoke + modal
        from .worker_client import WorkerError

        try:
            client, rid = self._request(context)
            event = client.wait(rid)
        except (ValueError, WorkerError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return self._finish(context, event)

    def invoke(self, context, event):
        from .worker_client import WorkerError

        try:
            self._client, self._rid = self._request(context)
        except (ValueError, WorkerError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _end_modal(self, context):
        wm = context.window_manager
        wm.event_timer_remove(self._timer)
        wm.progress_end()
        context.workspace.status_text_set(None)

    def modal(self, context, event):
        from .worker_client import WorkerError

        if event.type == "ESC":
            self._end_modal(context)
            stop_worker()  # terminates the running reconstruction
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
            self.report({"WARNING"}, "DA3 reconstruction cancelled")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            for ev in self._client.poll():
                final = self._client.interpret(ev, self._rid, self._progress(context))
                if final is not None:
                    self._end_modal(context)
                    return self._finish(context, final)
        except WorkerError as exc:
            self._end_modal(context)
            stop_worker()
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"RUNNING_MODAL"}

    def _progress(self, context):
        def show(ev):
            total = max(1, int(ev.get("total", 1)))
            context.window_manager.progress_update(int(100 * ev.get("done", 0) / total))
            context.workspace.status_text_set(self._clock.text(ev, time.monotonic()))
        return show


class DA3_PT_reconstruct(bpy.types.Panel):
    bl_label = "Reconstruct"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DA3"
    bl_parent_id = "DA3_PT_display"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.da3_reconstruct
        layout.prop(settings, "source")
        layout.prop(settings, "model")
        col = layout.column(align=True)
        for key in ("process_res", "process_res_method", "ref_view", "ray_pose", "threshold", "precision",
                    "gaussians"):
            col.prop(settings, key)
        box = layout.box()
        box.label(text="Video and long shots")
        for key in ("frame_stride", "fps", "max_views", "chunk_overlap", "loop_closure", "animated",
                    "image_sequence"):
            box.prop(settings, key)
        box = layout.box()
        box.label(text="Scale (metric models give metres)")
        box.prop(settings, "scale")
        row = layout.row(align=True)
        for key in ("create_cameras", "create_points", "create_depth_meshes"):
            row.prop(settings, key, toggle=True)
        if settings.create_points:
            layout.prop(settings, "max_points")
        if settings.create_depth_meshes:
            layout.prop(settings, "mesh_every")
        op = layout.operator(DA3_OT_reconstruct.bl_idname, text="Reconstruct", icon="PLAY")
        op.use_panel = True
        layout.label(text="Progress and ETA in the status bar; Esc cancels")


class DA3_OT_stop_worker(bpy.types.Operator):
    """Stop the DA3 worker process and free its memory"""

    bl_idname = "da3.stop_worker"
    bl_label = "Stop Worker"

    def execute(self, context):
        self.report({"INFO"}, "DA3 worker stopped" if stop_worker() else "No DA3 worker running")
        return {"FINISHED"}


class DA3_OT_test_worker(bpy.types.Operator):
    """Start the DA3 worker and check that it answers"""

    bl_idname = "da3.test_worker"
    bl_label = "Test"

    def execute(self, context):
        from .worker_client import WorkerError

        try:
            client = _client(context)
            event = client.wait(client.request("ping"), timeout=120)
        except WorkerError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"da3-plugins {event.get('version')} answers ({client.executable})")
        return {"FINISHED"}


class DA3_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    executable: StringProperty(name="da3p Executable", subtype="FILE_PATH", default="",
                               description="da3p (or python) of an environment with da3-plugins installed; "
                                           "empty: da3p on PATH")
    device: EnumProperty(name="Device", default="auto", items=[
        ("auto", "Automatic", ""), ("cpu", "CPU", ""), ("cuda", "CUDA", ""), ("mps", "Apple MPS", "")])

    def draw(self, context):
        from .worker_client import find_executable

        layout = self.layout
        row = layout.row()
        row.prop(self, "executable")
        row.operator(DA3_OT_test_worker.bl_idname)
        found = find_executable(self.executable)
        layout.label(text=f"Using: {found}" if found else "da3p not found: pip install da3-plugins, then set its path")
        layout.prop(self, "device")
        layout.operator(DA3_OT_stop_worker.bl_idname, icon="CANCEL")


def _menu_import(self, context):
    self.layout.operator(DA3_OT_import_scene.bl_idname, text="DA3 Reconstruction (.npz, scene.json)")


CLASSES = (DA3ReconstructSettings, DA3_OT_import_scene, DA3_FH_import_scene, DA3_OT_toggle_cameras,
           DA3_OT_reconstruct, DA3_OT_rescale, DA3_OT_stop_worker, DA3_OT_test_worker, DA3_AddonPreferences,
           DA3_PT_display, DA3_PT_reconstruct)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.da3_reconstruct = bpy.props.PointerProperty(type=DA3ReconstructSettings)
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)


def unregister():
    stop_worker()
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    del bpy.types.Scene.da3_reconstruct
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
