"""The compositor: the generated mouth blended into the photo with no visible square and matched colours."""

from __future__ import annotations

import numpy as np
import pytest

from avatar_cam.video.compositor import Compositor, OutputFormat, lower_face_mask
from avatar_cam.video.portrait import Portrait
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW


@pytest.fixture(scope="module")
def portrait(astronaut_png):
    return Portrait.load(astronaut_png)


def generated_face(seed: int = 0) -> np.ndarray:
    """A stand-in for Wav2Lip's (3,96,96) output: smooth, clearly unlike the photo."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0.2, 0.8, (3, 6, 6)).astype(np.float32)
    return np.kron(small, np.ones((16, 16), np.float32))


@pytest.mark.parametrize("h,w", [(96, 96), (231, 187), (640, 512)])
def test_mask_covers_the_mouth_never_the_upper_face_and_has_no_edge(h, w):
    mask = lower_face_mask(h, w)
    assert mask[: h // 2].max() == 0.0  # the upper half is Wav2Lip's input, never redrawn
    assert mask[int(h * 0.72), w // 2] > 0.99  # the mouth is fully replaced
    assert mask[:, 0].max() < 0.01 and mask[:, -1].max() < 0.01 and mask[-1].max() < 0.01  # fades at the box edges
    # Feathered: from 0 to 1 over many pixels (a pasted square would step by 1.0 at its edge).
    steepest = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert steepest < 20.0 / min(h, w)


@pytest.mark.parametrize("size", [(1280, 720), (640, 480), (320, 240)])
def test_the_mouth_rows_alone_give_the_same_frame_as_the_whole_face(portrait, size):
    """What lets the engine skip the upper half: scaling never reads above MOUTH_FIRST_ROW for blended pixels."""
    comp = Compositor(portrait, OutputFormat(*size))
    face = generated_face()
    whole = comp.compose(face)
    rows = comp.compose(face[:, MOUTH_FIRST_ROW:])
    np.testing.assert_array_equal(whole, rows)
    with pytest.raises(ValueError, match="rows"):
        comp.compose(face[:, MOUTH_FIRST_ROW + 1 :])


def test_only_the_blend_region_changes_and_colours_are_matched(portrait):
    comp = Compositor(portrait, OutputFormat(1280, 720))
    face = generated_face(1)
    face[2] = np.clip(face[2] + 0.3, 0, 1)  # a strong red cast the photo does not have
    frame = comp.compose(face)
    x0, y0, x1, y1 = comp.blend_region
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(frame[outside], comp.idle_frame[outside])
    assert np.abs(frame[y0:y1, x0:x1].astype(int) - comp.idle_frame[y0:y1, x0:x1]).max() > 40  # the mouth is new
    # Under the mask the mean colour is the photo's: no tinted square.
    w = comp.blend_mask[y0:y1, x0:x1, None]
    mean = lambda img: (img[y0:y1, x0:x1].astype(np.float64) * w).sum(axis=(0, 1)) / w.sum()  # noqa: E731
    assert np.abs(mean(frame) - mean(comp.idle_frame)).max() < 2.0


def test_mirror_flips_the_whole_frame(portrait):
    face = generated_face(2)
    plain = Compositor(portrait, OutputFormat(640, 360)).compose(face)
    mirrored = Compositor(portrait, OutputFormat(640, 360, mirror=True)).compose(face)
    np.testing.assert_array_equal(mirrored, plain[:, ::-1])
