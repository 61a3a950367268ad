"""GaussianAdapter, rotate_sh and umeyama_sim3 against the official package, e3nn and evo."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch

from da3_plugins.core.model.config import GaussianConfig
from da3_plugins.core.model.gaussians import GaussianAdapter, real_sh_basis, rotate_sh, sh_rotation_matrices
from da3_plugins.core.model.rotation import quat_xyzw_to_matrix
from da3_plugins.core.model.sim3 import umeyama_sim3
from helpers import assert_close, random_cameras, random_rotations


def _official_adapter():
    pytest.importorskip("e3nn")
    pytest.importorskip("evo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from depth_anything_3.model.gs_adapter import GaussianAdapter as Official
        from depth_anything_3.utils.geometry import map_pdf_to_opacity
    # as in the da3-giant yaml
    adapter = Official(
        sh_degree=2,
        pred_color=False,
        pred_offset_depth=True,
        pred_offset_xy=True,
        gaussian_scale_min=1e-5,
        gaussian_scale_max=30.0,
    )
    return adapter, map_pdf_to_opacity


def _inputs(b: int, s: int, h: int, w: int, seed: int):
    g = torch.Generator().manual_seed(seed + 100)
    ext, k = random_cameras(b, s, h, w, seed=seed)
    k[..., 0, 1] = 0.01 * k[..., 0, 0]  # a little skew, so K_n^-1 is not diagonal
    depth = 1.0 + 4.0 * torch.rand(b, s, h, w, generator=g)
    conf = torch.sigmoid(torch.randn(b, s, h, w, generator=g))
    raw = torch.randn(b, s, h, w, GaussianConfig().raw_channels, generator=g)
    raw[..., 0:2] *= 0.5  # sub-pixel offsets
    raw[..., -1] *= 0.1  # depth offset
    return ext, k, depth, conf, raw


def _sim3_cameras(ext: torch.Tensor, scale, seed: int) -> torch.Tensor:
    """w2c cameras whose c2w are those of ext moved by a Sim(3) of the given per-batch scale."""
    g = torch.Generator().manual_seed(seed)
    b = ext.shape[0]
    rot_a = random_rotations(b, g).double()
    t_a = torch.randn(b, 3, generator=g, dtype=torch.float64)
    scale = torch.as_tensor(scale, dtype=torch.float64).expand(b)
    c2w = torch.linalg.inv(ext.double())
    out = torch.eye(4, dtype=torch.float64).repeat(*ext.shape[:2], 1, 1)
    out[..., :3, :3] = rot_a[:, None] @ c2w[..., :3, :3]
    out[..., :3, 3] = scale[:, None, None] * (rot_a[:, None] @ c2w[..., :3, 3:])[..., 0] + t_a[:, None]
    return torch.linalg.inv(out).float()


def _compare(ours, ref) -> dict:
    diffs = {}
    for name in ("means", "scales", "rotations", "harmonics", "opacities"):
        diffs[name] = assert_close(getattr(ours, name), getattr(ref, name), name, rel=1e-4)
    return diffs


GT_CASES = ["none", "equal", "sim3_x2", "sim3_x5_clamped", "random", "degenerate"]


@pytest.mark.parametrize("b,s", [(1, 2), (2, 2), (1, 3), (2, 3)])
@pytest.mark.parametrize("gt_case", GT_CASES)
@pytest.mark.oracle
def test_adapter_matches_official(b, s, gt_case):
    official, map_pdf_to_opacity = _official_adapter()
    h, w = 28, 42
    seed = 7 * b + s
    ext, k, depth, conf, raw = _inputs(b, s, h, w, seed)
    if gt_case == "none":
        gt = None
    elif gt_case == "equal":
        gt = ext.clone()
    elif gt_case == "sim3_x2":
        gt = _sim3_cameras(ext, 2.0, seed)
    elif gt_case == "sim3_x5_clamped":
        gt = _sim3_cameras(ext, [5.0, 0.1][:b], seed)
    elif gt_case == "random":
        gt = random_cameras(b, s, h, w, seed=seed + 1)[0]
    else:  # every given camera of batch item 0 at the origin: evo fails -> scale 1 for all items
        gt = _sim3_cameras(ext, 2.0, seed)
        gt[0, :, :3, 3] = 0.0

    ours = GaussianAdapter(GaussianConfig())(ext, k, depth, conf, raw, gt_extrinsics=gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = official(
            extrinsics=ext,
            intrinsics=k,
            depths=depth,
            opacities=map_pdf_to_opacity(conf),
            raw_gaussians=raw,
            image_shape=(h, w),
            gt_extrinsics=gt,
        )
    _compare(ours, ref)


def test_adapter_scale_is_applied():
    """The Sim(3) case must actually rescale (guards against a silently skipped alignment)."""
    ext, k, depth, conf, raw = _inputs(1, 3, 14, 14, seed=3)
    adapter = GaussianAdapter()
    plain = adapter(ext, k, depth, conf, raw)
    scaled = adapter(ext, k, depth, conf, raw, gt_extrinsics=_sim3_cameras(ext, 2.0, 3))
    assert torch.allclose(scaled.scales, 2 * plain.scales, rtol=1e-5, atol=1e-6)
    assert torch.allclose(scaled.means, 2 * plain.means, rtol=1e-5, atol=1e-5)
    # 3x4 extrinsics are accepted and give the same result
    same = adapter(ext[..., :3, :], k, depth, conf, raw, gt_extrinsics=_sim3_cameras(ext, 2.0, 3)[..., :3, :])
    assert torch.equal(same.means, scaled.means)


def test_adapter_has_no_parameters_or_state():
    adapter = GaussianAdapter(GaussianConfig())
    assert list(adapter.parameters()) == []
    assert adapter.state_dict() == {}
    assert torch.allclose(adapter.sh_mask, torch.tensor([1.0] + [0.025] * 3 + [0.00625] * 5))


# ---------------------------------------------------------------- rotate_sh


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.oracle
def test_rotate_sh_matches_official(degree):
    pytest.importorskip("e3nn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from depth_anything_3.utils.sh_helpers import rotate_sh as official_rotate_sh
    g = torch.Generator().manual_seed(degree)
    rot = random_rotations(16, g)
    sh = torch.randn(16, 3, (degree + 1) ** 2, generator=g)
    ours = rotate_sh(sh, rot[:, None])
    ref = official_rotate_sh(sh, rot[:, None])
    # the official route goes through float32 Euler angles; ~1e-5 is its own round-off
    assert_close(ours, ref, f"rotate_sh degree {degree}", rel=1e-4)


def test_rotate_sh_matches_e3nn_recipe_float64():
    """The official recipe, run in float64 with e3nn (P-conjugation, matrix_to_angles,
    wigner_D(l, alpha, -beta, gamma)) equals our matrices to round-off, for l = 0..4."""
    o3 = pytest.importorskip("e3nn.o3")
    g = torch.Generator().manual_seed(11)
    rot = quat_xyzw_to_matrix(torch.randn(12, 4, generator=g, dtype=torch.float64))  # orthonormal to 1e-16
    perm = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its generators in the default dtype
    try:
        alpha, beta, gamma = o3.matrix_to_angles(perm.T @ rot @ perm)
        refs = [o3.wigner_D(l, alpha, -beta, gamma) for l in range(5)]
    finally:
        torch.set_default_dtype(default)
    ours = sh_rotation_matrices(rot, 4)
    for l in range(5):
        assert (ours[l] - refs[l]).abs().max() < 1e-12, l


def test_rotate_sh_is_a_rotation_of_the_function():
    """sum_k c'_k Y_k(d) == sum_k c_k Y_k(R^T d), and the basis is 3DGS's for l <= 2."""
    g = torch.Generator().manual_seed(5)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=g, dtype=torch.float64), dim=-1)
    x, y, z = dirs.unbind(-1)
    c1, c2 = 0.4886025119029199, (1.0925484305920792, 0.31539156525252005, 0.5462742152960396)
    gs_basis = torch.stack(
        (
            torch.full_like(x, 0.28209479177387814), -c1 * y, c1 * z, -c1 * x,
            c2[0] * x * y, -c2[0] * y * z, c2[1] * (2 * z * z - x * x - y * y), -c2[0] * x * z, c2[2] * (x * x - y * y),
        ),
        -1,
    )
    assert torch.allclose(real_sh_basis(dirs, 2), gs_basis, atol=1e-14)
    rot = quat_xyzw_to_matrix(torch.randn(4, generator=g, dtype=torch.float64))  # orthonormal to 1e-16
    coeffs = torch.randn(16, generator=g, dtype=torch.float64)
    rotated = rotate_sh(coeffs, rot)
    assert torch.allclose(real_sh_basis(dirs, 3) @ rotated, real_sh_basis(dirs @ rot, 3) @ coeffs, atol=1e-12)


def test_rotate_sh_near_identity_is_accurate():
    """Small rotations (the float32 Euler route of the official code loses ~1e-4 here)."""
    g = torch.Generator().manual_seed(8)
    for angle in (1e-3, 1e-5, 0.0):
        axis = torch.nn.functional.normalize(torch.tensor([0.3, 1.0, 0.7]), dim=0)
        q = torch.cat((axis * math.sin(angle / 2), torch.tensor([math.cos(angle / 2)])))
        rot = quat_xyzw_to_matrix(q)
        sh = torch.randn(3, 9, generator=g)
        exact = rotate_sh(sh.double(), rot.double())
        assert (rotate_sh(sh, rot).double() - exact).abs().max() < 1e-6


def test_importing_gaussians_does_not_import_e3nn_or_evo():
    code = (
        "import sys\n"
        "import da3_plugins.core.model.gaussians, da3_plugins.core.model.sim3\n"
        "bad = [m for m in ('e3nn', 'evo', 'depth_anything_3') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- umeyama_sim3


def _evo():
    pytest.importorskip("evo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evo.core.geometry import umeyama_alignment
        from evo.core.trajectory import PosePath3D
    return umeyama_alignment, PosePath3D


@pytest.mark.parametrize("reflect", [False, True])
def test_umeyama_matches_evo(reflect):
    umeyama_alignment, _ = _evo()
    g = torch.Generator().manual_seed(int(reflect))
    src = torch.randn(4, 7, 3, generator=g, dtype=torch.float64)
    dst = 1.7 * src @ random_rotations(4, g).double().transpose(-1, -2) + 0.3 * torch.randn(4, 7, 3, generator=g, dtype=torch.float64)
    if reflect:  # a mirrored target forces the det(U) det(V) < 0 branch
        dst = dst * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    rot, t, s = umeyama_sim3(src, dst)
    for i in range(4):
        r_ref, t_ref, s_ref = umeyama_alignment(src[i].numpy().T, dst[i].numpy().T, True)
        assert torch.allclose(rot[i], torch.from_numpy(r_ref), atol=1e-10)
        assert torch.allclose(t[i], torch.from_numpy(t_ref), atol=1e-10)
        assert abs(float(s[i]) - float(s_ref)) < 1e-10
        assert abs(float(torch.linalg.det(rot[i])) - 1) < 1e-10


def test_umeyama_matches_evo_posepath_align():
    _, PosePath3D = _evo()
    import numpy as np

    g = torch.Generator().manual_seed(4)
    n = 6
    poses = []
    for _ in range(2):
        m = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
        m[:, :3, :3] = random_rotations(n, g).double()
        m[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=torch.float64)
        poses.append(m)
    est, ref = poses
    path = PosePath3D(poses_se3=[p for p in est.numpy()])
    r_ref, t_ref, s_ref = path.align(PosePath3D(poses_se3=[p for p in ref.numpy()]), correct_scale=True)
    rot, t, s = umeyama_sim3(est[:, :3, 3], ref[:, :3, 3])
    assert np.allclose(rot.numpy(), r_ref, atol=1e-10)
    assert np.allclose(t.numpy(), t_ref, atol=1e-10)
    assert abs(float(s) - s_ref) < 1e-10


def test_umeyama_recovers_exact_sim3():
    g = torch.Generator().manual_seed(9)
    src = torch.randn(3, 5, 3, generator=g)
    rot_true = random_rotations(3, g)
    s_true = torch.tensor([0.5, 1.0, 3.0])
    t_true = torch.randn(3, 3, generator=g)
    dst = s_true[:, None, None] * src @ rot_true.transpose(-1, -2) + t_true[:, None]
    rot, t, s = umeyama_sim3(src, dst)
    assert rot.dtype == t.dtype == s.dtype == torch.float32
    assert torch.allclose(rot, rot_true, atol=1e-5)
    assert torch.allclose(t, t_true, atol=1e-5)
    assert torch.allclose(s, s_true, atol=1e-5)


def test_umeyama_degenerate_inputs_raise():
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(2, 3, generator=g)
    with pytest.raises(ValueError):
        umeyama_sim3(pts, 2 * pts)  # two points
    # two points are enough for the scale when collinear sets are allowed
    _, _, s = umeyama_sim3(pts, 2 * pts + 1, allow_collinear=True)
    assert abs(float(s) - 2) < 1e-6
    same = torch.ones(4, 3)
    with pytest.raises(ValueError):
        umeyama_sim3(same, torch.randn(4, 3, generator=g))  # zero spread of src
    with pytest.raises(ValueError):
        umeyama_sim3(torch.randn(4, 3, generator=g), same, allow_collinear=True)  # zero covariance
    batch = torch.randn(2, 4, 3, generator=g)
    with pytest.raises(ValueError):  # one degenerate batch item fails the call
        umeyama_sim3(torch.stack((batch[0], same)), batch)
    with pytest.raises(ValueError):
        umeyama_sim3(torch.randn(4, 2), torch.randn(4, 2))
