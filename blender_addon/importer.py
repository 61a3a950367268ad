# SPDX-License-Identifier: GPL-3.0-or-later
"""Build Blender data from a DA3 reconstruction (bpy + numpy only, no torch).

Cameras, the point cloud and its display are created in one new collection; every axis
conversion comes from the core's conventions module (vendored into the extension unchanged).
Nothing is left behind when building fails half-way.
"""

from __future__ import annotations

import numpy as np

import bpy
from mathutils import Matrix

from ._vendor import conventions as conv
from ._vendor import metric_scale as _scale
from ._vendor.points import depth_to_points, resolve_conf_threshold
from ._vendor.reconstruction import Reconstruction
from ._vendor.seeds import sh_dc_to_rgb

POINTS_GROUP = "DA3 Points"
POINT_MATERIAL = "DA3 Point Colour"
COLOR_ATTRIBUTE = "da3_color"


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _image(name: str, pixels: np.ndarray):
    """A packed Blender image from (H, W, 3) uint8 RGB (Blender's rows go bottom-up)."""
    h, w = pixels.shape[:2]
    img = bpy.data.images.new(name, width=w, height=h, alpha=False)
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., :3] = pixels[::-1].astype(np.float32) / 255.0
    img.pixels.foreach_set(rgba.ravel())
    img.pack()
    return img


def _camera(name: str, rec: Reconstruction, i: int, collection, background: bool):
    settings = conv.blender_camera_from_intrinsics(rec.intrinsics[i], rec.width, rec.height)
    data = bpy.data.cameras.new(name)
    data.sensor_fit = settings["sensor_fit"]
    data.sensor_width = settings["sensor_width"]
    data.sensor_height = settings["sensor_height"]
    data.lens = settings["lens"]
    data.shift_x, data.shift_y = settings["shift_x"], settings["shift_y"]
    obj = bpy.data.objects.new(name, data)
    obj.matrix_world = Matrix(conv.opencv_w2c_to_blender_matrix_world(rec.extrinsics[i]).tolist())
    for key in ("resolution_x", "resolution_y", "pixel_aspect_x", "pixel_aspect_y"):
        obj[f"da3_{key}"] = settings[key]
    obj["da3_view"] = i
    obj["da3_image_name"] = rec.image_names[i]
    if background:
        bg = data.background_images.new()
        bg.image = _image(f"{name} photo", rec.images[i])
        bg.alpha = 1.0
        bg.display_depth = "BACK"
        data.show_background_images = True
    collection.objects.link(obj)
    return obj


FOCAL_TOLERANCE = 0.01
"""The footage camera's lens and shift are animated when the focal length of some frame differs
from the median by more than this fraction (``conventions.focal_varies``); else one lens."""


def _keys(id_data, action, path: str, index: int, frames: np.ndarray, values: np.ndarray) -> None:
    """Keyframes ``(frame, value)`` on ``path[index]`` of ``id_data``, linear between keys."""
    fc = action.fcurve_ensure_for_datablock(id_data, path, index=index)
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
    import os

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


def _footage_camera(name: str, rec: Reconstruction, collection, context, background: bool,
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
    data = bpy.data.cameras.new(name)
    data.sensor_fit = still["sensor_fit"]
    data.sensor_width = still["sensor_width"]
    data.sensor_height = still["sensor_height"]
    data.lens = still["lens"]
    data.shift_x, data.shift_y = still["shift_x"], still["shift_y"]
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


def _new_group(name: str, floats):
    """A Geometry Nodes group: geometry in, the named float inputs (name, default), geometry out."""
    group = bpy.data.node_groups.new(name, "GeometryNodeTree")
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    for label, default in floats:
        sock = iface.new_socket(label, in_out="INPUT", socket_type="NodeSocketFloat")
        sock.default_value = default
        sock.min_value = 0.0
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    return group


def _points_node_group():
    group = bpy.data.node_groups.get(POINTS_GROUP)
    if group is not None:
        return group
    group = _new_group(POINTS_GROUP, [("Confidence Threshold", 0.0), ("Point Size", 0.005)])
    nodes, links = group.nodes, group.links
    g_in = nodes.new("NodeGroupInput")
    g_out = nodes.new("NodeGroupOutput")
    conf = nodes.new("GeometryNodeInputNamedAttribute")
    conf.data_type = "FLOAT"
    conf.inputs["Name"].default_value = "confidence"
    compare = nodes.new("FunctionNodeCompare")
    compare.data_type = "FLOAT"
    compare.operation = "GREATER_EQUAL"
    to_points = nodes.new("GeometryNodeMeshToPoints")
    set_mat = nodes.new("GeometryNodeSetMaterial")
    set_mat.inputs["Material"].default_value = _point_material()
    links.new(conf.outputs["Attribute"], compare.inputs[0])
    links.new(g_in.outputs["Confidence Threshold"], compare.inputs[1])
    links.new(g_in.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(compare.outputs["Result"], to_points.inputs["Selection"])
    links.new(g_in.outputs["Point Size"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], set_mat.inputs["Geometry"])
    links.new(set_mat.outputs["Geometry"], g_out.inputs["Geometry"])
    return group


def _point_material():
    mat = bpy.data.materials.get(POINT_MATERIAL)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(POINT_MATERIAL)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    for node in list(nodes):
        if node.type != "OUTPUT_MATERIAL":
            nodes.remove(node)
    output = next(n for n in nodes if n.type == "OUTPUT_MATERIAL")
    # unlit: the points show the photos' colours under any lighting, in renders too
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_type = "GEOMETRY"
    attr.attribute_name = COLOR_ATTRIBUTE
    emit = nodes.new("ShaderNodeEmission")
    emit.inputs["Strength"].default_value = 1.0
    links.new(attr.outputs["Color"], emit.inputs["Color"])
    links.new(emit.outputs["Emission"], output.inputs["Surface"])
    return mat


def _point_object(name: str, rec: Reconstruction, stride: int, collection, threshold: float):
    cloud = rec.points(conf_threshold=None, stride=stride)
    n = len(cloud)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", conv.points_to_blender(cloud.positions.astype(np.float64)).astype(np.float32).ravel())
    conf = mesh.attributes.new("confidence", "FLOAT", "POINT")
    conf.data.foreach_set("value", cloud.confidence.astype(np.float32))
    view = mesh.attributes.new("view", "INT", "POINT")
    view.data.foreach_set("value", cloud.view.astype(np.int32))
    # not "color": Cycles does not look that name up on point clouds (renders black)
    col = mesh.attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    rgba = np.ones((n, 4), np.float32)
    rgba[:, :3] = srgb_to_linear(cloud.colors.astype(np.float32) / 255.0)
    col.data.foreach_set("color", rgba.ravel())
    mesh.color_attributes.active_color = col
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    mod = obj.modifiers.new("DA3 Points", "NODES")
    mod.node_group = _points_node_group()
    socket = {s.name: s.identifier for s in mod.node_group.interface.items_tree if getattr(s, "in_out", "") == "INPUT"}
    mod[socket["Confidence Threshold"]] = float(threshold)
    mod[socket["Point Size"]] = float(_point_size(rec))
    obj.data.materials.append(_point_material())
    collection.objects.link(obj)
    return obj


def _point_size(rec: Reconstruction) -> float:
    """Radius close to the spacing of neighbouring pixels at the median depth."""
    valid = np.isfinite(rec.depth) & (rec.depth > 0)
    depth = float(np.median(rec.depth[valid])) if valid.any() else 1.0
    return 0.6 * depth / float(np.median(rec.intrinsics[:, 0, 0]))


def depth_mesh_faces(depth: np.ndarray, valid: np.ndarray, max_ratio: float = 1.1) -> np.ndarray:
    """Quads (M, 4) of vertex indices over the pixel grid (row-major), without the quads that
    touch an invalid pixel or span a depth discontinuity (max/min depth of the 4 corners above
    ``max_ratio``)."""
    h, w = depth.shape
    idx = np.arange(h * w).reshape(h, w)
    corners = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    d = depth.reshape(-1)[corners]
    ok = valid.reshape(-1)[corners].all(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok &= d.max(1) <= max_ratio * d.min(1)
    return corners[ok]


def _depth_mesh(name: str, rec: Reconstruction, i: int, collection, stride: int, conf_threshold):
    """The view's depth map as a triangle-free quad grid, UV-mapped onto its photo."""
    valid = rec.valid_mask(resolve_conf_threshold(conf_threshold, rec.conf))[i][::stride, ::stride]
    world = depth_to_points(rec.depth[i], rec.intrinsics[i], rec.extrinsics[i], stride=stride)
    depth = rec.depth[i][::stride, ::stride]
    h, w = depth.shape
    faces = depth_mesh_faces(depth, valid)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(h * w)
    mesh.vertices.foreach_set("co", conv.points_to_blender(world.reshape(-1, 3).astype(np.float64)).astype(np.float32).ravel())
    mesh.loops.add(4 * len(faces))
    mesh.loops.foreach_set("vertex_index", faces.ravel().astype(np.int32))
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, 4 * len(faces), 4, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 4, np.int32))
    # UVs: the pixel centre of each corner in the photo (v up)
    u, v = (c[::stride, ::stride].ravel()[faces.ravel()] for c in conv.pixel_centres(rec.height, rec.width))
    uv = np.stack([u / rec.width, 1.0 - v / rec.height], -1)
    layer = mesh.uv_layers.new(name="photo")
    layer.data.foreach_set("uv", uv.astype(np.float32).ravel())
    mesh.update(calc_edges=True)
    mesh.validate(clean_customdata=False)
    mat = bpy.data.materials.new(f"{name} photo")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    for node in list(nodes):
        if node.type != "OUTPUT_MATERIAL":
            nodes.remove(node)
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = _image(f"{name} texture", rec.images[i])
    emit = nodes.new("ShaderNodeEmission")
    links.new(tex.outputs["Color"], emit.inputs["Color"])
    links.new(emit.outputs["Emission"], next(n for n in nodes if n.type == "OUTPUT_MATERIAL").inputs["Surface"])
    mesh.materials.append(mat)
    obj = bpy.data.objects.new(name, mesh)
    obj["da3_view"] = i
    collection.objects.link(obj)
    return obj


SPLATS_GROUP = "DA3 Splats"


def _splats_node_group():
    group = bpy.data.node_groups.get(SPLATS_GROUP)
    if group is not None:
        return group
    group = _new_group(SPLATS_GROUP, [("Opacity Threshold", 0.1), ("Size", 2.0)])
    nodes, links = group.nodes, group.links
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")

    def named(name, data_type):
        node = nodes.new("GeometryNodeInputNamedAttribute")
        node.data_type = data_type
        node.inputs["Name"].default_value = name
        return node.outputs["Attribute"]

    compare = nodes.new("FunctionNodeCompare")
    compare.data_type = "FLOAT"
    compare.operation = "GREATER_EQUAL"
    links.new(named("opacity", "FLOAT"), compare.inputs[0])
    links.new(g_in.outputs["Opacity Threshold"], compare.inputs[1])
    to_points = nodes.new("GeometryNodeMeshToPoints")
    links.new(g_in.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(compare.outputs["Result"], to_points.inputs["Selection"])
    sphere = nodes.new("GeometryNodeMeshIcoSphere")
    sphere.inputs["Radius"].default_value = 1.0
    sphere.inputs["Subdivisions"].default_value = 1
    scale = nodes.new("ShaderNodeVectorMath")
    scale.operation = "SCALE"
    links.new(named("scale", "FLOAT_VECTOR"), scale.inputs[0])
    links.new(g_in.outputs["Size"], scale.inputs["Scale"])
    inst = nodes.new("GeometryNodeInstanceOnPoints")
    links.new(to_points.outputs["Points"], inst.inputs["Points"])
    links.new(sphere.outputs["Mesh"], inst.inputs["Instance"])
    links.new(named("rotation", "QUATERNION"), inst.inputs["Rotation"])
    links.new(scale.outputs["Vector"], inst.inputs["Scale"])
    set_mat = nodes.new("GeometryNodeSetMaterial")
    set_mat.inputs["Material"].default_value = _point_material()
    links.new(inst.outputs["Instances"], set_mat.inputs["Geometry"])
    links.new(set_mat.outputs["Geometry"], g_out.inputs["Geometry"])
    return group


def _gaussian_object(name: str, rec: Reconstruction, collection, max_count: int = 500_000):
    """DA3's Gaussians as points with position, scale, rotation, opacity and colour attributes,
    previewed as oriented coloured ellipsoids (1 sigma x Size) by the "DA3 Splats" modifier."""
    gs = rec.gaussians
    idx = np.arange(len(gs))
    if len(idx) > max_count:  # keep the most opaque
        idx = np.sort(np.argsort(-gs.opacities)[:max_count])
    n = len(idx)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", conv.points_to_blender(gs.means[idx].astype(np.float64)).astype(np.float32).ravel())
    attrs = {
        "scale": ("FLOAT_VECTOR", "vector", gs.scales[idx].astype(np.float32)),
        "rotation": ("QUATERNION", "value", conv.orientations_to_blender(gs.rotations[idx]).astype(np.float32)),
        "opacity": ("FLOAT", "value", gs.opacities[idx].astype(np.float32)),
    }
    rgb = sh_dc_to_rgb(gs.harmonics[idx, :, 0])
    rgba = np.ones((n, 4), np.float32)
    rgba[:, :3] = srgb_to_linear(rgb)
    attrs[COLOR_ATTRIBUTE] = ("FLOAT_COLOR", "color", rgba)
    for key, (kind, prop, values) in attrs.items():
        mesh.attributes.new(key, kind, "POINT").data.foreach_set(prop, values.ravel())
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    mod = obj.modifiers.new("DA3 Splats", "NODES")
    mod.node_group = _splats_node_group()
    obj.data.materials.append(_point_material())
    collection.objects.link(obj)
    return obj


def set_threshold(obj, value: float) -> None:
    mod = obj.modifiers.get("DA3 Points")
    ident = next(s.identifier for s in mod.node_group.interface.items_tree
                 if getattr(s, "in_out", "") == "INPUT" and s.name == "Confidence Threshold")
    mod[ident] = float(value)
    obj.update_tag()


def build_scene(rec: Reconstruction, name: str, *, context=None, cameras: bool = True, points: bool = True,
                background: bool = True, stride: int = 1, conf_threshold=None, depth_meshes: bool = False,
                mesh_stride: int = 2, gaussians: bool = True, animated: bool = True, sequences: bool = False,
                mesh_every: int = 1, focal_tolerance: float = FOCAL_TOLERANCE):
    """Create a collection ``name`` holding the cameras and the point cloud of ``rec``.

    A scene made from a video (``rec.frames``), with ``animated``, gets one camera keyed on every
    reconstructed frame, the footage as its background movie clip, and the scene's frame range,
    frame rate and render size from the footage; so does an image sequence with ``sequences``
    as well (numbered photos look like one, so they stay separate cameras unless asked).  Other
    scenes (and older files) get one camera per view.  Depth meshes for every
    ``mesh_every``-th view.

    Returns the collection.  On any error everything created so far is removed again.
    """
    context = context or bpy.context
    before = {attr: set(getattr(bpy.data, attr))
              for attr in ("objects", "meshes", "cameras", "images", "collections", "materials", "actions",
                           "movieclips")}
    scene = context.scene
    saved = (scene.camera, scene.frame_start, scene.frame_end, scene.render.fps, scene.render.fps_base,
             scene.render.resolution_x, scene.render.resolution_y, scene.render.pixel_aspect_x,
             scene.render.pixel_aspect_y, scene.active_clip)
    try:
        coll = bpy.data.collections.new(name)
        context.scene.collection.children.link(coll)
        coll["da3_model"] = rec.model
        coll["da3_is_metric"] = bool(rec.is_metric)
        coll["da3_units"] = "metres" if rec.is_metric else "relative"
        coll["da3_camera_source"] = rec.camera_source
        coll["da3_options"] = str(rec.options)
        src = rec.frames
        if cameras and animated and src is not None and (src.kind == "video" or sequences):
            _footage_camera(f"{name} camera", rec, coll, context, background, focal_tolerance)
        elif cameras:
            for i in range(rec.num_views):
                cam = _camera(f"{name} camera {i:03d}", rec, i, coll, background)
                if i == 0:
                    context.scene.camera = cam
                    context.scene.render.resolution_x = cam["da3_resolution_x"]
                    context.scene.render.resolution_y = cam["da3_resolution_y"]
                    context.scene.render.pixel_aspect_x = cam["da3_pixel_aspect_x"]
                    context.scene.render.pixel_aspect_y = cam["da3_pixel_aspect_y"]
                    context.scene.render.resolution_percentage = 100
        if points:
            thr = resolve_conf_threshold(conf_threshold, rec.conf) or 0.0
            _point_object(f"{name} points", rec, stride, coll, thr)
        if gaussians and rec.gaussians is not None:
            _gaussian_object(f"{name} gaussians", rec, coll)
        if depth_meshes:
            for i in range(0, rec.num_views, max(1, int(mesh_every))):
                _depth_mesh(f"{name} depth {i:03d}", rec, i, coll, mesh_stride, conf_threshold)
        return coll
    except BaseException:
        (scene.camera, scene.frame_start, scene.frame_end, scene.render.fps, scene.render.fps_base,
         scene.render.resolution_x, scene.render.resolution_y, scene.render.pixel_aspect_x,
         scene.render.pixel_aspect_y, scene.active_clip) = saved
        for attr, old in before.items():
            store = getattr(bpy.data, attr)
            for item in list(store):
                if item not in old:
                    store.remove(item)
        raise


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
