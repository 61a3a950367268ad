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
from .footage import FOCAL_TOLERANCE, camera_data, footage_camera
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
    data = camera_data(name, settings)
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


def _point_object(name: str, rec: Reconstruction, stride: int, collection, threshold: float,
                  max_points: int = 0):
    if max_points and max_points > 0:  # a long shot: a uniform random subset, memory for it only
        cloud, _ = rec.sample_points(int(max_points), conf_threshold=None, stride=stride)
    else:
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
                mesh_every: int = 1, focal_tolerance: float = FOCAL_TOLERANCE, max_points: int = 0):
    """Create a collection ``name`` holding the cameras and the point cloud of ``rec``.

    A scene made from a video (``rec.frames``), with ``animated``, gets one camera keyed on every
    reconstructed frame, the footage as its background movie clip, and the scene's frame range,
    frame rate and render size from the footage; so does an image sequence with ``sequences``
    as well (numbered photos look like one, so they stay separate cameras unless asked).  Other
    scenes (and older files) get one camera per view.  Depth meshes for every
    ``mesh_every``-th view.  ``max_points`` > 0: at most that many points (a uniform random
    subset of the valid pixels; the confidence threshold stays live in the modifier).

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
            footage_camera(f"{name} camera", rec, coll, context, background, focal_tolerance)
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
            _point_object(f"{name} points", rec, stride, coll, thr, max_points)
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

