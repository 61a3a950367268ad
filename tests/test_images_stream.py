"""Streaming input (issue 15): scan headers, then decode and resize a few views at a time.

The streamed pixels and transforms must be bit-identical to the whole-list path
(``process_images(load_images(...))``), the scan must not decode, bad files must fail fast
(or be skipped and listed), and no more than the views in flight may exist at full size.
"""

import struct
import threading
import weakref
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from da3_plugins.core import image_stream, images
from da3_plugins.core.images import (ImageInputError, iter_processed, load_images, load_processed, read_image,
                                     scan_images, stream_target)
from da3_plugins.core.preprocess import (crop_target, process_image, process_images, process_one,
                                         processed_size, unify_sizes)

METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")


def _pattern(h, w, channels=3, seed=0):
    """A smooth ramp plus noise: resizes of it differ visibly between interpolations."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
    return np.clip(ramp + rng.integers(0, 55, (h, w, channels)), 0, 255).astype(np.uint8)


def _jpeg(path, h, w, orientation=None, seed=0, quality=90):
    im = Image.fromarray(_pattern(h, w, seed=seed))
    exif = im.getexif()
    if orientation is not None:
        exif[274] = orientation
    im.save(path, exif=exif, quality=quality)


def _png_with_trailing_exif(path, h, w, orientation):
    """A PNG whose eXIf chunk comes after the image data (PIL sees it only when decoding)."""
    Image.fromarray(_pattern(h, w, seed=9)).save(path)
    data = path.read_bytes()
    exif = Image.Exif()
    exif[274] = orientation
    payload = exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Mixed sizes and aspects: EXIF orientations 6 and 8, PNG, grayscale, RGBA, palette GIF,
    16-bit PNG, a PNG with a trailing eXIf (orientation 6), and a duplicate stem."""
    d = tmp_path_factory.mktemp("mixed")
    _jpeg(d / "a_rot6.jpg", 90, 160, orientation=6, seed=1)
    _jpeg(d / "a_rot8.jpg", 75, 101, orientation=8, seed=2)
    _jpeg(d / "b_plain.jpg", 121, 97, seed=3)
    Image.fromarray(_pattern(120, 100, seed=4)).save(d / "c.png")
    Image.fromarray(_pattern(77, 131, seed=5)[..., 0]).save(d / "d_gray.png")
    Image.fromarray(_pattern(100, 100, 4, seed=6)).save(d / "e_rgba.png")
    Image.fromarray(_pattern(64, 150, seed=7)).convert("P").save(d / "f_palette.gif")
    Image.fromarray(_pattern(50, 70, seed=8)[..., 0].astype(np.uint16) * 257).save(d / "g_16bit.png")
    _png_with_trailing_exif(d / "h_late_exif.png", 30, 50, orientation=6)
    _jpeg(d / "c.jpg", 50, 150, seed=10)  # same stem as c.png: named c_1
    return d


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """23 frames of 64 x 96 at 10 fps (mp4v)."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for k in range(23):
        writer.write(_pattern(64, 96, seed=100 + k))
    writer.release()
    return path


def _reference_decode(path):
    """The decode load_image_file did before streaming: load, exif_transpose, convert."""
    with Image.open(path) as im:
        im.load()
        return images.to_rgb_array(ImageOps.exif_transpose(im))


def _assert_stream_matches_batch(inputs, method, res, fps=2.0):
    loaded = load_images(inputs, fps=fps)
    want_pixels, want_transforms = process_images([im.pixels for im in loaded], res, method)
    scan = scan_images(inputs, fps=fps)
    assert [r.name for r in scan.refs] == [im.name for im in loaded]
    assert [r.source for r in scan.refs] == [im.source for im in loaded]
    assert [tuple(r.size_hw) for r in scan.refs] == [im.pixels.shape[:2] for im in loaded]
    assert stream_target(scan.refs, res, method) == want_pixels.shape[1:3]
    pixels, transforms = load_processed(scan.refs, res, method)
    assert pixels.shape == want_pixels.shape and np.array_equal(pixels, want_pixels)
    assert np.array_equal(transforms, want_transforms)  # bit-identical, not merely close
    streamed = list(iter_processed(scan.refs, res, method, workers=3, prefetch=2))
    assert [i for i, _ in streamed] == list(range(len(loaded)))
    for i, im in streamed:
        assert np.array_equal(im.pixels, want_pixels[i]) and np.array_equal(im.transform, want_transforms[i])
    return loaded, scan


@pytest.mark.parametrize("method", METHODS)
def test_streaming_is_bit_identical_to_the_batch_for_a_mixed_folder(mixed_folder, method):
    for res in (56, 98, 150):
        loaded, scan = _assert_stream_matches_batch([mixed_folder], method, res)
    names = [r.name for r in scan.refs]
    assert names == ["a_rot6", "a_rot8", "b_plain", "c", "c_1", "d_gray", "e_rgba", "f_palette", "g_16bit",
                     "h_late_exif"]
    sizes = dict(zip(names, map(tuple, scan.sizes)))
    assert scan.sizes.dtype == np.int64
    assert sizes["a_rot6"] == (160, 90) and sizes["a_rot8"] == (101, 75) and sizes["h_late_exif"] == (50, 30)
    # the pixels are those of the decode before streaming, turned upright
    for ref, im in zip(scan.refs, loaded):
        assert np.array_equal(read_image(ref), _reference_decode(ref.source)), ref.name
        assert np.array_equal(im.pixels, _reference_decode(ref.source)), ref.name


@pytest.mark.parametrize("method", METHODS)
def test_streaming_is_bit_identical_for_video_frames_and_arrays(video, mixed_folder, method):
    arrays = [_pattern(33, 47, seed=1), _pattern(60, 20, seed=2)[..., 0], Image.fromarray(_pattern(45, 45, seed=3))]
    loaded, scan = _assert_stream_matches_batch([str(video), mixed_folder / "b_plain.jpg", *arrays], method, 70,
                                                fps=3.0)
    # 10 fps sampled at 3 fps: a step of 3.33 frames, as read_video_frames always sampled
    frames = [r for r in scan.refs if r.kind == "video"]
    assert [r.frame for r in frames] == [0, 4, 7, 10, 14, 17, 20]
    assert [r.name for r in frames] == [f"clip_{i:06d}" for i in (0, 4, 7, 10, 14, 17, 20)]
    assert [r.source for r in frames] == [f"{video}#{i}" for i in (0, 4, 7, 10, 14, 17, 20)]
    assert [r.kind for r in scan.refs[len(frames):]] == ["file", "memory", "memory", "memory"]
    assert [r.source for r in scan.refs[len(frames) + 1:]] == ["array", "array", "PIL"]
    # every frame is the one a plain sequential cv2 read gives
    cap = cv2.VideoCapture(str(video))
    decoded = [cap.read()[1][..., ::-1] for _ in range(23)]
    cap.release()
    for ref in frames:
        assert np.array_equal(read_image(ref), decoded[ref.frame])
    assert len(scan_images(video, fps=None).refs) == 23


def test_processed_size_agrees_with_process_image_for_every_size_and_method():
    checked = 0
    for method in METHODS:
        for res in (14, 28, 42, 50, 56, 70):
            for h in range(14, 90, 3):
                for w in range(14, 90, 4):
                    try:
                        got = process_image(np.zeros((h, w, 3), np.uint8), res, method).pixels.shape[:2]
                    except ValueError as exc:
                        with pytest.raises(ValueError) as planned:
                            processed_size(h, w, res, method)
                        assert str(planned.value) == str(exc)
                        continue
                    assert processed_size(h, w, res, method) == got, (h, w, res, method)
                    checked += 1
    assert checked > 10000


@pytest.mark.parametrize("method", METHODS)
def test_process_one_with_the_common_size_is_the_batch(method):
    photos = [_pattern(h, w, seed=h * w) for h, w in ((40, 60), (61, 37), (50, 50), (29, 90), (70, 71))]
    want_pixels, want_transforms = process_images(photos, 56, method)
    target = crop_target([processed_size(*p.shape[:2], 56, method) for p in photos])
    assert target == want_pixels.shape[1:3]
    for i, p in enumerate(photos):
        one = process_one(p, 56, method, target, f"images[{i}]")
        assert np.array_equal(one.pixels, want_pixels[i]) and np.array_equal(one.transform, want_transforms[i])
    assert crop_target(np.array([[5, 9], [7, 3]])) == (5, 3)
    assert unify_sizes([]) == []


def _write_bad_files(folder):
    _jpeg(folder / "a_good.jpg", 40, 60)
    (folder / "b_corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (folder / "c_empty.png").write_bytes(b"")
    Image.fromarray(_pattern(10, 30)).save(folder / "d_tiny.png")
    Image.fromarray(_pattern(30, 44)).save(folder / "e_good.png")


def test_a_bad_file_fails_the_scan_with_its_name_or_is_skipped_and_listed(tmp_path):
    _write_bad_files(tmp_path)
    with pytest.raises(ImageInputError, match=r"b_corrupt\.jpg: not a readable image"):
        scan_images(tmp_path)
    with pytest.raises(ImageInputError, match=r"c_empty\.png: the file is empty \(0 bytes\)$"):
        scan_images([tmp_path / "a_good.jpg", tmp_path / "c_empty.png"])
    with pytest.raises(ImageInputError, match=r"d_tiny\.png: 30x10 pixels is too small \(at least 14x14"):
        scan_images(tmp_path / "d_tiny.png")
    with pytest.raises(ImageInputError, match="no such file"):
        scan_images(tmp_path / "missing.jpg", skip_unreadable=True)
    with pytest.raises(ImageInputError, match=r"more than the limit of 1000"):
        scan_images(tmp_path / "a_good.jpg", max_pixels=1000)

    scan = scan_images(tmp_path, skip_unreadable=True)
    assert [r.name for r in scan.refs] == ["a_good", "e_good"]
    assert [path for path, _ in scan.skipped] == [str(tmp_path / n) for n in ("b_corrupt.jpg", "c_empty.png",
                                                                              "d_tiny.png")]
    reasons = [reason for _, reason in scan.skipped]
    assert reasons[0].startswith("not a readable image") and reasons[1] == "the file is empty (0 bytes)"
    assert reasons[2].startswith("30x10 pixels is too small") and all("\n" not in r for r in reasons)
    pixels, _ = load_processed(scan.refs, 28, "upper_bound_resize")
    assert pixels.shape == (2, 14, 28, 3)

    with pytest.raises(ImageInputError, match=r"^images: none of the 3 inputs is readable; .*b_corrupt\.jpg"):
        scan_images([tmp_path / n for n in ("b_corrupt.jpg", "c_empty.png", "d_tiny.png")], skip_unreadable=True)


def test_an_unreadable_video_is_skipped_and_a_damaged_jpeg_fails_when_decoded(tmp_path, video):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(ImageInputError, match=r"broken\.mp4: not a readable video"):
        scan_images([video, tmp_path / "broken.mp4"])
    scan = scan_images([video, tmp_path / "broken.mp4"], skip_unreadable=True)
    assert scan.skipped == [(str(tmp_path / "broken.mp4"), "not a readable video")] and len(scan.refs) == 5

    _jpeg(tmp_path / "cut.jpg", 200, 300)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # the header survives, the data does not
    ref = scan_images(tmp_path / "cut.jpg").refs[0]
    assert ref.size_hw == (200, 300)
    with pytest.raises(ImageInputError, match=r"cut\.jpg: truncated or corrupt image$"):
        read_image(ref)
    with pytest.raises(ImageInputError, match=r"cut\.jpg: truncated"):
        list(iter_processed([ref], 56))


def test_a_file_changed_after_the_scan_is_reported(tmp_path):
    _jpeg(tmp_path / "a.jpg", 40, 60)
    scan = scan_images(tmp_path)
    _jpeg(tmp_path / "a.jpg", 60, 40)
    with pytest.raises(ImageInputError, match=r"a\.jpg: decodes to 40x60 pixels but its header said 60x40"):
        load_processed(scan.refs, 28, "upper_bound_resize")


def test_the_scan_reads_headers_only(tmp_path, monkeypatch, mixed_folder):
    big = Image.fromarray(np.broadcast_to(np.arange(4000, dtype=np.uint8)[None, :, None], (3000, 4000, 3)).copy())
    exif = big.getexif()
    exif[274] = 6
    big.save(tmp_path / "big.jpg", exif=exif, quality=80)
    for name in ("a_rot6.jpg", "c.png", "d_gray.png", "h_late_exif.png"):
        (tmp_path / name).write_bytes((mixed_folder / name).read_bytes())

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the scan decoded pixels")

    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "load", no_decoding)
        patch.setattr(ImageFile.ImageFile, "load", no_decoding)
        scan = scan_images(tmp_path)
    assert dict(zip([r.name for r in scan.refs], map(tuple, scan.sizes)))["big"] == (4000, 3000)
    assert read_image(scan.refs[1]).shape == (4000, 3000, 3)  # the decode does turn it upright


def test_at_most_the_views_in_flight_exist_at_full_size(tmp_path, monkeypatch):
    for k in range(14):
        _jpeg(tmp_path / f"p{k:02d}.jpg", 120 + k, 160, seed=k)
    refs = scan_images(tmp_path).refs
    want, _ = process_images([im.pixels for im in load_images(tmp_path)], 42, "upper_bound_resize")
    real_read = images.read_image
    for workers, prefetch in ((1, 1), (2, 4), (3, 2), (2, 8)):
        lock = threading.Lock()
        state = {"alive": 0, "peak": 0, "started": 0}

        def released():
            with lock:
                state["alive"] -= 1

        def counting_read(ref, **kwargs):
            pixels = real_read(ref, **kwargs)
            with lock:
                state["started"] += 1
                state["alive"] += 1
                state["peak"] = max(state["peak"], state["alive"])
            weakref.finalize(pixels, released)
            return pixels

        monkeypatch.setattr(images, "read_image", counting_read)
        for taken, (i, im) in enumerate(iter_processed(refs, 42, workers=workers, prefetch=prefetch), 1):
            assert np.array_equal(im.pixels, want[i])
            with lock:
                # nothing runs ahead of the consumer beyond the prefetch window
                assert state["started"] <= taken + prefetch
                assert state["alive"] <= min(workers, prefetch)
            threading.Event().wait(0.002)  # a slow consumer: the pool must wait, not read ahead
        assert state["started"] == len(refs) and state["alive"] == 0
        assert 1 <= state["peak"] <= min(workers, prefetch) <= prefetch + workers


def test_skip_leaves_views_out_but_keeps_the_common_size(mixed_folder):
    refs = scan_images(mixed_folder).refs
    want, want_t = load_processed(refs, 56, "lower_bound_crop")
    got = list(iter_processed(refs, 56, "lower_bound_crop", skip={0, 3, len(refs) - 1}))
    assert [i for i, _ in got] == [i for i in range(len(refs)) if i not in (0, 3, len(refs) - 1)]
    for i, im in got:
        assert np.array_equal(im.pixels, want[i]) and np.array_equal(im.transform, want_t[i])


def test_load_processed_fills_a_given_memmap_and_reports_progress(tmp_path, mixed_folder):
    refs = scan_images(mixed_folder).refs
    h, w = stream_target(refs, 70, "upper_bound_resize")
    out = np.lib.format.open_memmap(tmp_path / "views.npy", mode="w+", dtype=np.uint8, shape=(len(refs), h, w, 3))
    calls = []
    pixels, transforms = load_processed(refs, 70, out=out, progress=lambda done, total: calls.append((done, total)))
    assert pixels is out and transforms.shape == (len(refs), 3, 3) and transforms.dtype == np.float64
    assert calls == [(k, len(refs)) for k in range(1, len(refs) + 1)]
    out.flush()
    want, _ = process_images([im.pixels for im in load_images(mixed_folder)], 70)
    assert np.array_equal(np.load(tmp_path / "views.npy"), want)
    with pytest.raises(ValueError, match="out must be uint8 of shape"):
        load_processed(refs, 70, out=np.zeros((len(refs), h, w + 1, 3), np.uint8))


def test_video_frames_are_counted_without_decoding(video):
    assert image_stream.count_frames(video) == 23
    assert image_stream.sample_frames(23, 10.0, 3.0) == [0, 4, 7, 10, 14, 17, 20]
    assert image_stream.sample_frames(5, 0.0, 3.0) == [0, 1, 2, 3, 4]  # unknown native rate: every frame


def test_fast_decode_reads_jpegs_reduced_with_the_same_sizes_and_transforms(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    smooth = cv2.resize(rng.integers(0, 255, (12, 16, 3)).astype(np.uint8), (1600, 1200), interpolation=cv2.INTER_CUBIC)
    for k, orientation in enumerate((1, 6)):
        im = Image.fromarray(smooth)
        exif = im.getexif()
        exif[274] = orientation
        im.save(tmp_path / f"p{k}.jpg", exif=exif, quality=92)
    Image.fromarray(_pattern(300, 400)).save(tmp_path / "p2.png")
    refs = scan_images(tmp_path).refs
    decoded = {}
    real_read = images.read_image

    def recording_read(ref, **kwargs):
        pixels = real_read(ref, **kwargs)
        decoded[ref.name] = pixels.shape[:2]
        return pixels

    monkeypatch.setattr(images, "read_image", recording_read)
    for method in ("upper_bound_resize", "lower_bound_crop"):
        exact, exact_t = load_processed(refs, 140, method)
        fast, fast_t = load_processed(refs, 140, method, fast_decode=True)
        assert np.array_equal(exact_t, fast_t) and fast.shape == exact.shape
        assert decoded["p0"] == (300, 400) and decoded["p1"] == (400, 300)  # DCT scale 1/4, turned upright
        assert decoded["p2"] == (300, 400) and np.array_equal(fast[2], exact[2])  # not a JPEG: exact
        diff = np.abs(fast[:2].astype(np.int16) - exact[:2].astype(np.int16))
        assert diff.mean() < 0.6 and diff.max() <= 6
