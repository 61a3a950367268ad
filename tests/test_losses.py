"""The training losses on hand-made cases, and the teacher-student RANSAC alignment."""

from __future__ import annotations

import math

import pytest
import torch

from da3_plugins.core import losses as L


def test_depth_loss_by_hand():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gt = torch.tensor([[[[1.5, 2.0], [2.0, 9.0]]]])
    conf = torch.tensor([[[[2.0, 1.0], [1.0, 3.0]]]])
    mask = torch.tensor([[[[True, True], [True, False]]]])
    expected = ((2 * 0.5 - 0.2 * math.log(2)) + (0 - 0) + (1 * 1.0 - 0)) / 3
    assert L.depth_loss(pred, gt, conf, mask, lambda_c=0.2).item() == pytest.approx(expected)
    # confidence trades error against log c: for error e the best c is lambda / e
    c = torch.linspace(0.5, 5, 1000)
    vals = c * 0.1 - 0.2 * torch.log(c)
    assert c[vals.argmin()].item() == pytest.approx(2.0, abs=0.01)


def test_ray_point_camera_gradient_losses_by_hand():
    mask = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    rays = torch.zeros(1, 1, 1, 2, 6)
    gt = rays.clone()
    gt[..., 0, 1, 5] = 2.0
    assert L.ray_loss(rays, gt, mask).item() == pytest.approx(1.0)  # (0 + 2) / 2
    depth = torch.tensor([[[[2.0, 1.0]]]])
    dirs = torch.tensor([[[[[0, 0, 1.0], [0.5, 0, 1.0]]]]])
    origin = torch.zeros(1, 1, 1, 2, 3)
    pts = torch.tensor([[[[[0, 0, 2.0], [0.5, 0, 1.5]]]]])
    assert L.point_loss(depth, dirs, origin, pts, mask).item() == pytest.approx(0.25)  # (0 + 0.5) / 2
    code = torch.tensor([[1.0, 2, 3, 0.5, 0.5, 0.5, 0.5, 1.0, 1.2]])
    flipped = code.clone()
    flipped[:, 3:7] *= -1  # the same rotation
    assert L.camera_loss(code, flipped).item() == pytest.approx(0.0)
    moved = code.clone()
    moved[:, 0] += 0.3
    moved[:, 8] += 0.1
    assert L.camera_loss(code, moved).item() == pytest.approx(0.4)
    ramp = torch.arange(12.0).reshape(1, 1, 3, 4)
    m = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    assert L.gradient_loss(ramp + 5, ramp, m).item() == pytest.approx(0.0)  # shifts have no edges
    assert L.gradient_loss(2 * ramp, ramp, m).item() == pytest.approx(1.0 + 4.0)


def test_normalize_scene():
    pts = torch.tensor([[[[[3.0, 4, 0], [0, 0, 10.0]]]]])  # distances 5 and 10
    depth = torch.tensor([[[[4.0, 10.0]]]])
    trans = torch.tensor([[[1.0, 2, 3]]])
    mask = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    d, p, t, s = L.normalize_scene(depth, pts, trans, mask)
    assert s.item() == pytest.approx(7.5)
    assert p.norm(dim=-1).mean().item() == pytest.approx(1.0)
    assert t[0, 0, 0].item() == pytest.approx(1 / 7.5) and d[0, 0, 0, 1].item() == pytest.approx(10 / 7.5)


def test_total_loss_weights():
    terms = {"depth": torch.tensor(1.0), "gradient": torch.tensor(2.0)}
    assert L.total_loss(terms, L.LossWeights(gradient=0.5)).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        L.total_loss({})


def test_ransac_scale_shift_with_outliers():
    g = torch.Generator().manual_seed(0)
    teacher = torch.rand(2000, generator=g) * 5 + 0.5
    metric = 2.5 * teacher + 0.7 + 0.01 * torch.randn(2000, generator=g)
    outliers = torch.rand(2000, generator=g) < 0.3
    metric[outliers] = torch.rand(int(outliers.sum()), generator=g) * 30
    mask = torch.rand(2000, generator=g) < 0.5  # sparse measurements
    s, t, inl = L.ransac_scale_shift(teacher, metric, mask)
    assert s == pytest.approx(2.5, abs=0.01) and t == pytest.approx(0.7, abs=0.03)
    # plain least squares is pulled away by the outliers
    a = torch.stack([teacher[mask], torch.ones(int(mask.sum()))], 1).double()
    s_ls = torch.linalg.lstsq(a, metric[mask].double()[:, None]).solution[0].item()
    assert abs(s_ls - 2.5) > 0.2
    assert inl.float().mean().item() > 0.5
    with pytest.raises(ValueError, match="mask"):
        L.ransac_scale_shift(teacher, metric, torch.zeros(2000, dtype=torch.bool))


def test_a_short_training_run_lowers_the_loss():
    # a small head fitted to a fixed batch: the loss machinery gives useful gradients
    torch.manual_seed(0)
    feats = torch.randn(1, 2, 8, 16, 16)
    gt = torch.rand(1, 2, 16, 16) + 1
    mask = torch.ones(1, 2, 16, 16, dtype=torch.bool)
    head = torch.nn.Conv2d(8, 2, 3, padding=1)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    with torch.enable_grad():
        for _ in range(60):
            out = head(feats.flatten(0, 1)).unflatten(0, (1, 2))
            depth, conf = torch.exp(out[:, :, 0]), torch.exp(out[:, :, 1]) + 1
            loss = L.total_loss({"depth": L.depth_loss(depth, gt, conf, mask),
                                 "gradient": L.gradient_loss(depth, gt, mask)})
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _two_view_plane(shift_px: int):
    """A fronto-parallel plane at depth 2 seen by view 0 and by view 1, translated sideways so
    that view 1's image is view 0's shifted ``shift_px`` pixels to the left."""
    h, w, f = 28, 42, 20.0
    k = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    z = 2.0
    tx = shift_px * z / f  # camera 1 sits tx to the right of camera 0
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pts = torch.zeros(1, 2, h, w, 3)
    for j, cx in enumerate((0.0, tx)):
        pts[0, j, ..., 0] = (u - w / 2) / f * z + cx
        pts[0, j, ..., 1] = (v - h / 2) / f * z
        pts[0, j, ..., 2] = z
    depth = torch.full((1, 2, h, w), z)
    return pts, torch.ones(1, 2, h, w, dtype=torch.bool), depth, k.expand(1, 2, 3, 3)


def test_correspondence_targets_by_hand():
    pts, mask, depth, k = _two_view_plane(shift_px=14)
    idx, ok = L.correspondence_targets(pts, mask, depth, k, patch=14)
    assert idx.shape == (1, 1, 6) and ok.shape == (1, 1, 6)  # 2 x 3 patches of 14 px
    # view 1's patch (r, c) sees what view 0's patch (r, c + 1) sees; the last column leaves view 0
    assert ok[0, 0].tolist() == [True, True, False, True, True, False]
    assert idx[0, 0][ok[0, 0]].tolist() == [1, 2, 4, 5]
    # an occluder in view 0 (much nearer than the plane) hides the matches
    depth0 = depth.clone()
    depth0[0, 0, :, 14:28] = 0.5
    _, ok2 = L.correspondence_targets(pts, mask, depth0, k, patch=14)
    assert ok2[0, 0].tolist() == [False, True, False, False, True, False]
    # invalid depth in view 1 is no target
    mask2 = mask.clone()
    mask2[0, 1] = False
    assert not L.correspondence_targets(pts, mask2, depth, k, patch=14)[1].any()


def test_correspondence_loss_by_hand():
    keys = torch.eye(3)[None] * 10  # (B=1, P=3, d=3)
    idx = torch.tensor([[[2, 0]]])  # (B, N-1=1, P=2)
    ok = torch.tensor([[[True, True]]])
    right = keys[:, [2, 0]][:, None]  # queries equal to their targets' keys: low loss
    wrong = keys[:, [1, 1]][:, None]
    lo, hi = L.correspondence_loss(right, keys, idx, ok), L.correspondence_loss(wrong, keys, idx, ok)
    logit = 100 / math.sqrt(3)
    expected = math.log(math.exp(logit) + 2) - logit
    assert lo.item() == pytest.approx(expected, rel=1e-4) and hi.item() > 50
    # masked entries do not count
    assert L.correspondence_loss(wrong, keys, idx, torch.tensor([[[False, False]]])).item() == 0.0
