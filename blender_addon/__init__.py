# SPDX-License-Identifier: GPL-3.0-or-later
"""Depth Anything 3 for Blender: import DA3 reconstructions (.npz scene files).

The add-on needs only bpy and numpy (no torch); the scene-file reader and the camera
conventions are the core's own numpy modules, vendored into ``_vendor/`` by the build.
"""

from __future__ import annotations

import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper


class DA3_OT_import_scene(bpy.types.Operator, ImportHelper):
    """Import a Depth Anything 3 reconstruction: cameras with their photos, coloured points"""

    bl_idname = "import_scene.da3_npz"
    bl_label = "Import DA3 Reconstruction"
    bl_options = {"REGISTER", "UNDO", "PRESET"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    directory: StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    cameras: BoolProperty(name="Cameras", default=True, description="One camera per view with exact intrinsics")
    background: BoolProperty(name="Photos as Backgrounds", default=True,
                             description="Each camera shows its photo as background image")
    points: BoolProperty(name="Point Cloud", default=True)
    stride: IntProperty(name="Pixel Stride", default=1, min=1, max=64,
                        description="Use every n-th pixel of each depth map")
    threshold_mode: EnumProperty(
        name="Confidence", default="AUTO",
        items=[("AUTO", "Automatic", "The official percentile rule"), ("NONE", "Keep All", "Show every point"),
               ("VALUE", "Value", "Use the value below")])
    threshold: FloatProperty(name="Threshold", default=1.5, min=0.0)

    def execute(self, context):
        from ._vendor.reconstruction import Reconstruction, SceneFileError
        from .importer import build_scene

        path = Path(self.filepath)
        start = time.perf_counter()
        try:
            rec = Reconstruction.load(path)
        except SceneFileError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        conf = {"AUTO": "auto", "NONE": None, "VALUE": self.threshold}[self.threshold_mode]
        try:
            coll = build_scene(rec, path.stem, context=context, cameras=self.cameras, points=self.points,
                               background=self.background, stride=self.stride, conf_threshold=conf)
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
        obj = _da3_points(context)
        if obj is None:
            layout.label(text="Select an imported DA3 point cloud")
            return
        mod = obj.modifiers["DA3 Points"]
        for item in mod.node_group.interface.items_tree:
            if getattr(item, "in_out", "") == "INPUT" and item.socket_type == "NodeSocketFloat":
                layout.prop(mod, f'["{item.identifier}"]', text=item.name)
        coll = obj.users_collection[0] if obj.users_collection else None
        if coll is not None:
            layout.label(text=f"Scale: {coll.get('da3_units', '?')}, model: {coll.get('da3_model', '?')}")
            layout.operator(DA3_OT_toggle_cameras.bl_idname, icon="CAMERA_DATA")


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


def _menu_import(self, context):
    self.layout.operator(DA3_OT_import_scene.bl_idname, text="DA3 Reconstruction (.npz)")


CLASSES = (DA3_OT_import_scene, DA3_FH_import_scene, DA3_OT_toggle_cameras, DA3_PT_display)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)


def unregister():
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
