# SPDX-License-Identifier: GPL-3.0-or-later
"""Footage in Blender: one camera animated over a video's frames, and rescaling a reconstruction.

bpy + numpy only.  The frame numbers, frame rate and lens rule come from the core's
conventions module, the rescale maths from its ``metric_scale`` module (both vendored
unchanged); see ``docs/conventions.md`` (Footage in Blender).
"""

from __future__ import annotations

import os

import numpy as np

import bpy
from bpy.props import EnumProperty, FloatProperty
from mathutils import Matrix

from ._vendor import conventions as conv
from ._vendor import metric_scale as _scale
from ._vendor.metric_scale import factor_for_distance
from ._vendor.reconstruction import Reconstruction


FOCAL_TOLERANCE = 0.01
"""The footage camera's lens and shift are animated when the focal length of some frame differs
from the median by more than this fraction (``conventions.focal_varies``); else one lens."""


def camera_data(name: str, settings: dict):
    """A new camera data-block with the lens, sensor and shift of
    ``conventions.blender_camera_from_intrinsics``' settings."""
    data = bpy.data.cameras.new(name)
    data.sensor_fit = settings["sensor_fit"]
    data.sensor_width = settings["sensor_width"]
    data.sensor_height = settings["sensor_height"]
    data.lens = settings["lens"]
    data.shift_x, data.shift_y = settings["shift_x"], settings["shift_y"]
    return data


def _keys(id_data, action, path: str, index: int, frames: np.ndarray, values: np.ndarray) -> None:
    """Keyframes ``(frame, value)`` on ``path[index]`` of ``id_data``, linear between keys."""
    if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+ (layered actions)
        fc = action.fcurve_ensure_for_datablock(id_data, path, index=index)
    else:  # Blender 4.2, 4.3
        fc = action.fcurves.find(path, index=index) or action.fcurves.new(path, index=index)
    fc.keyframe_points.clear()
    fc.keyframe_points.add(len(frames))
    co = np.empty((len(frames), 2), np.float32)
    co[:, 0], co[:, 1] = frames, values
    fc.keyframe_points.foreach_set("co", co.ravel())
    for k in fc.keyframe_points:
        k.interpolation = "LINEAR"
    fc.update()


def _action(id_data, name: str):
    id_data.animation_data_create()
    action = bpy.data.actions.new(name)
    id_data.animation_data.action = action
    return action


def _footage_clip(rec: Reconstruction, src):
    """The footage as a movie clip (a video file, or the image sequence from its first view's
    file), frame 1 at scene frame 1; None when the recorded file is not there any more."""
    if src.kind == "video":
        path = src.path
    else:
        files = rec.options.image_files
        path = os.path.join(src.path, files[0]) if files and files[0] else ""
    if not path or not os.path.isfile(path):
        return None
    clip = bpy.data.movieclips.load(path)
    clip.frame_start = 1
    clip.frame_offset = 0
    return clip


def footage_camera(name: str, rec: Reconstruction, collection, context, background: bool,
                    tolerance: float = FOCAL_TOLERANCE):
    """One camera animated over the footage's frames (see :func:`build_scene`)."""
    src = rec.frames
    scene = context.scene
    n = rec.num_views
    h, w = (int(x) for x in rec.original_sizes[0])
    k = rec.intrinsics_original  # the footage's own pixels
    frames = conv.blender_frame_numbers(src.indices, src.kind)
    animate_lens = conv.focal_varies(k[:, 0, 0], tolerance)
    still = conv.blender_camera_from_intrinsics(np.median(k, axis=0), w, h)
    data = camera_data(name, still)
    obj = bpy.data.objects.new(name, data)
    obj.rotation_mode = "XYZ"
    mats = conv.opencv_w2c_to_blender_matrix_world(rec.extrinsics)
    loc = np.empty((n, 3))
    rot = np.empty((n, 3))
    prev = None
    for i in range(n):
        m = Matrix(mats[i].tolist())
        e = m.to_euler("XYZ", prev) if prev is not None else m.to_euler("XYZ")
        loc[i], rot[i], prev = m.translation, e, e
    action = _action(obj, f"{name} motion")
    for j in range(3):
        _keys(obj, action, "location", j, frames, loc[:, j])
        _keys(obj, action, "rotation_euler", j, frames, rot[:, j])
    if animate_lens:
        per = [conv.blender_camera_from_intrinsics(k[i], w, h) for i in range(n)]
        lens_action = _action(data, f"{name} lens")
        for key in ("lens", "shift_x", "shift_y"):
            _keys(data, lens_action, key, 0, frames, np.array([p[key] for p in per]))
    obj["da3_footage"] = src.path
    obj["da3_footage_kind"] = src.kind
    obj["da3_animated_lens"] = bool(animate_lens)
    obj["da3_frames"] = [int(f) for f in frames]
    clip = _footage_clip(rec, src) if background else None
    if clip is not None:
        bg = data.background_images.new()
        bg.source = "MOVIE_CLIP"
        bg.clip = clip
        bg.use_camera_clip = False
        bg.alpha = 1.0
        bg.display_depth = "BACK"
        bg.frame_method = "STRETCH"
        data.show_background_images = True
        scene.active_clip = clip
    collection.objects.link(obj)
    # the scene follows the footage: frames, rate, size, pixel aspect
    scene.camera = obj
    scene.frame_start, scene.frame_end = int(frames.min()), int(frames.max())
    rate = src.rate if src.rate > 0 else (float(clip.fps) if clip is not None and clip.fps > 0 else 0.0)
    scene.render.fps, scene.render.fps_base = conv.blender_frame_rate(rate)
    scene.render.resolution_x, scene.render.resolution_y = w, h
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = still["pixel_aspect_x"], still["pixel_aspect_y"]
    scene.render.resolution_percentage = 100
    scene.frame_set(int(frames.min()))
    return obj


def da3_collection(obj):
    """The DA3 collection ``obj`` belongs to (the one ``build_scene`` made), or None."""
    if obj is None:
        return None
    return next((c for c in obj.users_collection if "da3_model" in c), None)


def selected_points(context):
    """World positions (2, 3) of the two points that define a known distance: two selected
    vertices of the active mesh (in Edit Mode or selected before), or else two selected objects.
    Raises ValueError (one line) otherwise."""
    obj = context.active_object
    if obj is not None and obj.type == "MESH":
        if obj.mode == "EDIT":
            obj.update_from_editmode()
        mesh = obj.data
        sel = np.zeros(len(mesh.vertices), bool)
        mesh.vertices.foreach_get("select", sel)
        if sel.sum() == 2:
            co = np.zeros(len(mesh.vertices) * 3, np.float64)
            mesh.vertices.foreach_get("co", co)
            m = np.array(obj.matrix_world)
            p = co.reshape(-1, 3)[sel]
            return p @ m[:3, :3].T + m[:3, 3]
    objs = list(context.selected_objects)
    if len(objs) == 2:
        return np.array([np.array(o.matrix_world)[:3, 3] for o in objs])
    raise ValueError("select exactly two vertices of the point cloud (Edit Mode) or two objects")


def rescale_collection(coll, factor: float) -> int:
    """Scale everything ``build_scene`` made in ``coll`` by ``factor`` about the world origin
    (``core.metric_scale``): camera locations and their keys, mesh vertices and object
    translations, Gaussian sizes, the points' display size.  Rotations and lenses are untouched,
    so every camera sees the same picture.  Every new value is computed before anything
    changes.  Returns the number of objects changed."""
    s = _scale.check_factor(factor)
    plan = []  # (apply function) built first, applied after
    for obj in coll.objects:
        world = np.array(obj.matrix_world)
        new_world = Matrix(_scale.scale_transforms(world, s).tolist())
        keyed = []
        ad = obj.animation_data
        if ad is not None and ad.action is not None:
            for fc in _fcurves(ad):
                if fc.data_path == "location":
                    co = np.zeros(2 * len(fc.keyframe_points), np.float64)
                    fc.keyframe_points.foreach_get("co", co)
                    co = co.reshape(-1, 2)
                    co[:, 1] = _scale.scale_points(co[:, 1:], s)[:, 0]
                    keyed.append((fc, co))
        verts = None
        if obj.type == "MESH":
            co = np.zeros(3 * len(obj.data.vertices), np.float32)
            obj.data.vertices.foreach_get("co", co)
            verts = _scale.scale_points(co.reshape(-1, 3), s)
        sizes = None
        if obj.type == "MESH" and "scale" in obj.data.attributes and obj.modifiers.get("DA3 Splats") is not None:
            g = np.zeros(3 * len(obj.data.vertices), np.float32)
            obj.data.attributes["scale"].data.foreach_get("vector", g)
            sizes = _scale.scale_points(g, s)
        plan.append((obj, new_world, keyed, verts, sizes))
    for obj, new_world, keyed, verts, sizes in plan:
        if keyed:
            for fc, co in keyed:
                fc.keyframe_points.foreach_set("co", co.astype(np.float32).ravel())
                fc.update()  # handles recomputed from the new values
        else:
            obj.matrix_world = new_world
        if verts is not None:
            obj.data.vertices.foreach_set("co", verts.astype(np.float32).ravel())
            obj.data.update()
        if sizes is not None:
            obj.data.attributes["scale"].data.foreach_set("vector", sizes.astype(np.float32))
        mod = obj.modifiers.get("DA3 Points")
        if mod is not None:
            ident = next(x.identifier for x in mod.node_group.interface.items_tree
                         if getattr(x, "in_out", "") == "INPUT" and x.name == "Point Size")
            mod[ident] = float(mod[ident]) * s
        obj.update_tag()
    coll["da3_scale_factor"] = float(coll.get("da3_scale_factor", 1.0)) * s
    return len(plan)


def _fcurves(anim_data):
    """The F-curves of an object's action (Blender 4.4+ layered actions, or the older list)."""
    action = anim_data.action
    if hasattr(action, "fcurves") and not getattr(action, "is_action_layered", False):
        return list(action.fcurves)
    slot = getattr(anim_data, "action_slot", None)
    out = []
    for layer in action.layers:
        for strip in layer.strips:
            bag = strip.channelbag(slot) if slot is not None else None
            if bag is not None:
                out.extend(bag.fcurves)
    return out


class DA3_OT_rescale(bpy.types.Operator):
    """Rescale the active DA3 reconstruction (cameras, points, depth meshes, Gaussians) about the world origin; every camera keeps its picture"""

    bl_idname = "da3.rescale"
    bl_label = "Rescale Reconstruction"
    bl_options = {"REGISTER", "UNDO"}

    mode: EnumProperty(name="By", default="DISTANCE", items=[
        ("DISTANCE", "Known Distance", "The two selected points (vertices in Edit Mode, or objects) are this far apart"),
        ("FACTOR", "Factor", "Multiply every length by a factor")])
    length: FloatProperty(name="Distance", default=1.0, min=1e-9, subtype="DISTANCE", unit="LENGTH",
                          description="The true distance between the two selected points (metres)")
    factor: FloatProperty(name="Factor", default=1.0, min=1e-9)

    @classmethod
    def poll(cls, context):
        return da3_collection(context.active_object) is not None

    def execute(self, context):
        coll = da3_collection(context.active_object)
        if coll is None:
            self.report({"ERROR"}, "Select an object of an imported DA3 reconstruction first")
            return {"CANCELLED"}
        was_edit = context.active_object.mode == "EDIT"
        try:
            if self.mode == "DISTANCE":
                a, b = selected_points(context)
                s = factor_for_distance(a, b, self.length)
            else:
                s = float(self.factor)
            if was_edit:
                bpy.ops.object.mode_set(mode="OBJECT")
            rescale_collection(coll, s)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            if was_edit and context.active_object.mode != "EDIT":
                bpy.ops.object.mode_set(mode="EDIT")
        if self.mode == "DISTANCE":
            coll["da3_units"] = "metres (from a known distance)"
        self.report({"INFO"}, f"{coll.name}: every length x {s:.6g}")
        return {"FINISHED"}
