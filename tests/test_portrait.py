"""Portrait preparation: the photo a user picks becomes a correctly framed Wav2Lip face, or a clear error."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from avatar_cam.errors import PortraitError
from avatar_cam.video.face_detect import FaceBox, detect_faces
from avatar_cam.video.portrait import Portrait

# Landmarks in skimage's astronaut (512x512), read off the image by eye.
EYES = [(201, 101), (246, 103)]  # pupil centres
MOUTH = (222, 146)
CHIN = 176  # lowest row of the chin, at the centre of the jaw


@pytest.fixture(scope="module")
def astro_rgb() -> np.ndarray:
    return data.astronaut()


def _save(rgb: np.ndarray, path: Path, **kw) -> Path:
    Image.fromarray(rgb).save(path, **kw)
    return path


def _assert_frames_astronaut_face(box: FaceBox, scale: float = 1.0) -> None:
    """The crop holds both eyes, the mouth and the chin, and is not so loose that the face is lost in it."""
    x0, y0, x1, y1 = (v / scale for v in (box.x0, box.y0, box.x1, box.y1))
    for x, y in [*EYES, MOUTH]:
        assert x0 + 10 <= x <= x1 - 10 and y0 + 10 <= y <= y1 - 10, (box, (x, y))
    assert y1 >= CHIN + 1, f"chin cut off: box ends at {y1:.0f}, chin at {CHIN}"
    assert x0 >= 160 and x1 <= 290 and y0 >= 45 and y1 <= 200, f"crop too loose: {box}"


def _has_error(path: Path, *words: str, **kw) -> PortraitError:
    with pytest.raises(PortraitError) as info:
        Portrait.load(path, **kw)
    err = info.value
    assert path.name in str(err), str(err)
    text = str(err).replace(str(path), "").lower()  # the words must come from the message, not the file name
    for w in words:
        assert w in text, text
    assert err.hint, "every failure must say what to do"
    return err


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_astronaut_face_is_framed_for_wav2lip(astro_rgb, tmp_path, fmt):
    p = Portrait.load(_save(astro_rgb, tmp_path / f"astronaut.{fmt}"))
    assert p.image.shape == (512, 512, 3) and p.image.dtype == np.uint8 and p.image.flags.c_contiguous
    assert p.path == tmp_path / f"astronaut.{fmt}"
    assert p.notes == []
    _assert_frames_astronaut_face(p.box)

    fi = p.face_input
    assert fi.shape == (6, 96, 96) and fi.dtype == np.float32 and fi.flags.c_contiguous
    assert fi.min() >= 0.0 and fi.max() <= 1.0 and fi.max() > 0.5
    assert not fi[:3, 48:].any(), "the lower half the model redraws must be hidden from it"
    np.testing.assert_array_equal(fi[:3, :48], fi[3:, :48])
    crop = p.image[p.box.y0 : p.box.y1, p.box.x0 : p.box.x1]
    want = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32).transpose(2, 0, 1) / 255
    assert np.abs(fi[3:] - want).mean() < 0.005 and np.abs(fi[3:] - want).max() < 0.1  # the crop, whole
    # BGR, as the model was trained: skin has more red (channel 2) than blue (channel 0).
    assert fi[5, 20:76, 20:76].mean() > fi[3, 20:76, 20:76].mean() + 0.1


def test_detect_faces_reports_the_raw_box(astro_rgb):
    faces = detect_faces(cv2.cvtColor(astro_rgb, cv2.COLOR_RGB2BGR))
    assert len(faces) == 1
    f = faces[0]
    assert 170 <= f.x0 <= 190 and 260 <= f.x1 <= 280 and 55 <= f.y0 <= 80 and 150 <= f.y1 < CHIN


def test_no_human_face_in_cat_or_coffee():
    for name in ("chelsea", "coffee"):
        bgr = cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR)
        assert detect_faces(bgr) == [], name


def test_textures_are_not_faces():
    """Coins, craters and cells fool a single Haar cascade (found while tuning); none may become a face."""
    coins, moon, cell = (np.dstack([getattr(data, n)()] * 3) for n in ("coins", "moon", "cell"))
    for img in (cell, coins[:, ::-1], cv2.resize(coins, None, fx=2, fy=2), cv2.resize(moon, None, fx=2, fy=2)):
        assert detect_faces(np.ascontiguousarray(img)) == []


def test_cat_photo_is_recognised_as_a_cat(tmp_path):
    err = _has_error(_save(data.chelsea(), tmp_path / "chelsea.png"), "a cat's face")
    assert "face_box" in err.hint


def test_coffee_photo_has_no_face(tmp_path):
    err = _has_error(_save(data.coffee(), tmp_path / "coffee.png"), "no face")
    assert "cat" not in str(err).replace(str(tmp_path), "")
    assert "face_box" in err.hint


def test_huge_photo_is_scaled_down(astro_rgb, tmp_path):
    big = cv2.resize(astro_rgb, (8000, 8000), interpolation=cv2.INTER_LINEAR)
    p = Portrait.load(_save(big, tmp_path / "huge.jpg", quality=90))
    assert p.image.shape == (4096, 4096, 3)
    assert any("8000x8000" in n and "4096" in n for n in p.notes), p.notes
    _assert_frames_astronaut_face(p.box, scale=4096 / 512)


def test_max_side_is_respected(astro_rgb, tmp_path):
    p = Portrait.load(_save(astro_rgb, tmp_path / "a.png"), max_side=400)
    assert max(p.image.shape[:2]) == 400 and any("512x512" in n for n in p.notes)
    _assert_frames_astronaut_face(p.box, scale=400 / 512)


def test_grayscale_photo(astro_rgb, tmp_path):
    grey = cv2.cvtColor(astro_rgb, cv2.COLOR_RGB2GRAY)
    p = Portrait.load(_save(grey, tmp_path / "grey.png"))
    assert p.image.shape == (512, 512, 3)
    np.testing.assert_array_equal(p.image[..., 0], grey)
    np.testing.assert_array_equal(p.image[..., 2], grey)
    _assert_frames_astronaut_face(p.box)


@pytest.mark.parametrize("orientation, stored_as", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_rotated_phone_photo_is_turned_upright(astro_rgb, tmp_path, orientation, stored_as):
    upright = astro_rgb[:, 40:460]  # 420 wide, 512 tall, so a wrong rotation also shows in the shape
    stored = Image.fromarray(upright).transpose(stored_as)  # what a phone writes: sensor pixels + a tag
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"phone{orientation}.jpg"
    stored.save(path, exif=exif, quality=95)
    assert detect_faces(cv2.cvtColor(np.asarray(stored), cv2.COLOR_RGB2BGR)) == []  # sideways: no face

    p = Portrait.load(path)
    assert p.image.shape == (512, 420, 3)
    assert np.abs(p.image[..., ::-1].astype(int) - upright).mean() < 4
    _assert_frames_astronaut_face(FaceBox(p.box.x0 + 40, p.box.y0, p.box.x1 + 40, p.box.y1))


def test_manual_box_is_in_upright_photo_pixels(astro_rgb, tmp_path):
    stored = Image.fromarray(astro_rgb[:, 40:460]).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif)
    p = Portrait.load(tmp_path / "phone.jpg", face_box=(100, 50, 300, 150))
    assert p.box == FaceBox(100, 50, 300, 150)


def test_transparent_png_is_flattened_on_grey(astro_rgb, tmp_path):
    rgba = np.dstack([astro_rgb, np.full((512, 512), 255, np.uint8)])
    rgba[:40, :, :3] = (255, 0, 255)  # colour hidden under the transparent border must not show
    rgba[:40, :, 3] = 0
    rgba[-40:, :, 3] = 0
    rgba[:, :40, 3] = 0
    p = Portrait.load(_save(rgba, tmp_path / "cutout.png"))
    assert p.image.shape == (512, 512, 3)
    assert (p.image[:40] == 128).all() and (p.image[:, :40] == 128).all()
    np.testing.assert_array_equal(p.image[100:400, 100:400], astro_rgb[100:400, 100:400, ::-1])
    _assert_frames_astronaut_face(p.box)


def test_palette_png_with_transparent_colour(astro_rgb, tmp_path):
    rgb = astro_rgb.copy()
    rgb[:30] = (255, 0, 255)
    pal = Image.fromarray(rgb).quantize(255)
    index = pal.getpixel((0, 0))
    pal.save(tmp_path / "palette.png", transparency=index)
    p = Portrait.load(tmp_path / "palette.png")
    assert (p.image[:30] == 128).all()
    _assert_frames_astronaut_face(p.box)


def test_grey_with_alpha_png(astro_rgb, tmp_path):
    grey = cv2.cvtColor(astro_rgb, cv2.COLOR_RGB2GRAY)
    la = Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), mode="LA")
    la.save(tmp_path / "la.png")
    _assert_frames_astronaut_face(Portrait.load(tmp_path / "la.png").box)


def test_cmyk_jpeg(astro_rgb, tmp_path):
    path = tmp_path / "print.jpg"
    Image.fromarray(astro_rgb).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    p = Portrait.load(path)
    assert np.abs(p.image[..., ::-1].astype(int) - astro_rgb).mean() < 8  # colours survive, not inverted
    _assert_frames_astronaut_face(p.box)


def test_16_bit_pngs(astro_rgb, tmp_path):
    grey16 = cv2.cvtColor(astro_rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    p = Portrait.load(tmp_path / "grey16.png")
    np.testing.assert_array_equal(p.image[..., 1], grey16 // 257)  # scaled, not clipped to white
    _assert_frames_astronaut_face(p.box)

    cv2.imwrite(str(tmp_path / "rgb16.png"), cv2.cvtColor(astro_rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    p = Portrait.load(tmp_path / "rgb16.png")
    assert np.abs(p.image[..., ::-1].astype(int) - astro_rgb).max() <= 1
    _assert_frames_astronaut_face(p.box)


def test_broken_files_give_a_clear_error(astro_rgb, tmp_path):
    jpeg = io.BytesIO()
    Image.fromarray(astro_rgb).save(jpeg, "JPEG")
    jpeg = jpeg.getvalue()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    _has_error(tmp_path / "truncated.jpg", "damaged or incomplete")
    (tmp_path / "corrupt.jpg").write_bytes(jpeg[:200] + bytes(range(256)) * 40)
    _has_error(tmp_path / "corrupt.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _has_error(tmp_path / "empty.jpg", "empty")
    (tmp_path / "notes.jpg").write_text("shopping list: milk, eggs\n")
    _has_error(tmp_path / "notes.jpg", "not an image")
    _has_error(_save(np.zeros((1, 1, 3), np.uint8), tmp_path / "dot.png"), "1x1", "too small")
    _has_error(tmp_path / "missing.jpg", "not found")
    (tmp_path / "folder.jpg").mkdir()
    _has_error(tmp_path / "folder.jpg", "not a file")


def test_decompression_bomb_is_refused(astro_rgb, tmp_path, monkeypatch):
    path = _save(astro_rgb, tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # stands in for a 30000x30000 file: 512x512 > 2x this
    _has_error(path, "too large")


def test_small_face_is_refused_with_a_reason(astro_rgb, tmp_path):
    small = cv2.resize(astro_rgb, (200, 200), interpolation=cv2.INTER_AREA)  # face ~36 px wide
    canvas = np.full((400, 400, 3), 200, np.uint8)
    canvas[100:300, 100:300] = small
    err = _has_error(_save(canvas, tmp_path / "group.png"))
    assert "no face" in str(err) or "px wide" in str(err)


def test_two_faces_takes_the_largest(astro_rgb, tmp_path):
    small = cv2.resize(astro_rgb, (320, 320), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 320 + 512, 3), 220, np.uint8)
    canvas[96:416, :320] = small  # the smaller face comes first, so "largest" is not "first found"
    canvas[:, 320:] = astro_rgb
    p = Portrait.load(_save(canvas, tmp_path / "two.png"))
    assert len(detect_faces(p.image)) == 2
    _assert_frames_astronaut_face(FaceBox(p.box.x0 - 320, p.box.y0, p.box.x1 - 320, p.box.y1))
    assert any("2 faces" in n and "largest" in n for n in p.notes), p.notes


def test_manual_face_box(astro_rgb, tmp_path):
    coffee = _save(data.coffee(), tmp_path / "coffee.png")  # no face: a manual box is the way out
    p = Portrait.load(coffee, face_box=(100, 50, 300, 250))
    assert p.box == FaceBox(100, 50, 300, 250)
    crop = cv2.resize(p.image[50:250, 100:300], (96, 96), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    np.testing.assert_allclose(p.face_input[3:], crop.transpose(2, 0, 1), atol=1e-6)
    assert Portrait.load(coffee, face_box=[500, 300, 700, 500]).box == FaceBox(500, 300, 600, 400)  # clipped

    # The box is in the photo's own pixels even when the photo is scaled down for use.
    astro = _save(astro_rgb, tmp_path / "astro.png")
    assert Portrait.load(astro, face_box=(100, 50, 300, 250), max_side=256).box == FaceBox(50, 25, 150, 125)

    for bad, words in [((700, 10, 900, 200), ("outside",)), ((10, 10, 30, 30), ("smaller than 32",)),
                       ((300, 10, 100, 200), ("empty",)), ((1, 2, 3), ("four whole numbers",))]:
        err = _has_error(coffee, *words, face_box=bad)
        assert "face_box" in str(err) and "face_box" in err.hint


def test_from_array_matches_load(astro_rgb, tmp_path):
    bgr = cv2.cvtColor(astro_rgb, cv2.COLOR_RGB2BGR)
    a = Portrait.from_array(bgr)
    b = Portrait.load(_save(astro_rgb, tmp_path / "a.png"))
    assert a.box == b.box and a.path is None
    np.testing.assert_array_equal(a.face_input, b.face_input)
    with pytest.raises(PortraitError, match="float64"):
        Portrait.from_array(bgr / 255.0)


_PNG = io.BytesIO()
Image.fromarray(cv2.resize(data.astronaut(), (96, 96))).save(_PNG, "PNG")
_JPEG = io.BytesIO()
Image.fromarray(cv2.resize(data.astronaut(), (96, 96))).save(_JPEG, "JPEG")
_SEEDS = [_PNG.getvalue(), _JPEG.getvalue()]


@st.composite
def _damaged_image_bytes(draw) -> bytes:
    raw = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw)


@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=2000), _damaged_image_bytes()))
def test_any_bytes_give_portrait_error_or_portrait(blob):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "photo.jpg"
        path.write_bytes(blob)
        try:
            Portrait.load(path)
        except PortraitError as e:
            assert "photo.jpg" in str(e) and e.hint
