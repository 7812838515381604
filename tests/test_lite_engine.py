"""The lite engine on a real portrait and real speech: the mouth follows the voice, only the mouth moves,
and nothing is needed from the network."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from avatar_cam.audio.mel import melspectrogram
from avatar_cam.errors import AvatarCamError, ModelNotInstalledError
from avatar_cam.lipsync.lite import LiteLipSync
from avatar_cam.lipsync.registry import FALLBACK_NOTE, make_lipsync
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.mel_windows import mel_window
from avatar_cam.live.renderer import FrameRenderer
from avatar_cam.video.compositor import OutputFormat
from avatar_cam.video.face_layout import locate
from avatar_cam.video.idle_motion import IdleSettings
from avatar_cam.video.portrait import Portrait


@pytest.fixture(scope="module")
def astronaut(astronaut_png) -> Portrait:
    return Portrait.load(astronaut_png)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def test_features_are_found_on_the_astronaut(astronaut):
    lay = locate(astronaut)
    assert set(lay.found) == {"eyes", "mouth"}
    # Hand-measured in the 512x512 photo: pupils at (202, 100) and (248, 103), the teeth's middle at y 146.
    (lx, ly), (rx, ry) = ((e.x, e.y) for e in lay.eyes)
    assert abs(lx - 202) < 4 and abs(ly - 100) < 3 and abs(rx - 248) < 4 and abs(ry - 103) < 3
    assert all(7 < e.half_width < 14 and 2 < e.half_height < 6 for e in lay.eyes)
    assert abs(lay.mouth_x - 224) < 4 and abs(lay.mouth_y - 146) < 3 and 17 < lay.mouth_half_width < 26
    assert lay.mouth_curve > 2  # she smiles: the corners are higher than the middle


def test_grey_photo_places_the_mouth_by_the_box(astronaut):
    grey = Portrait.from_array(cv2.cvtColor(astronaut.image, cv2.COLOR_BGR2GRAY))
    lay = locate(grey)
    assert "mouth" not in lay.found  # no lip colour to go by
    assert abs(lay.mouth_y - 146) < 8  # the face box's proportions still put it on the mouth


def test_mouth_follows_the_voice_and_nothing_else_moves(astronaut, speech_16k):
    clock = FrameClock(30.0)
    renderer = FrameRenderer(LiteLipSync(), astronaut, OutputFormat(1280, 720), clock, idle=IdleSettings.off())
    assert renderer.lipsync.name == "lite"
    idle = renderer.compositor.idle_frame
    x0, y0, x1, y1 = renderer.face_region
    lay = renderer.compositor.layout
    # The mouth and jaw: from just above the lips to below the chin, the middle of the face's width.
    my0, my1 = int(lay.mouth_y - 0.3 * lay.mouth_half_width), int(lay.chin_y + 0.05 * lay.height)
    mx0, mx1 = int(lay.mouth_x - 1.2 * lay.mouth_half_width), int(lay.mouth_x + 1.2 * lay.mouth_half_width)
    outside = np.ones(idle.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert (x1 - x0) * (y1 - y0) < 0.08 * outside.size  # the face region is a small part of the frame

    change, envelope, silent, infos = [], [], [], []
    for frame, info in renderer.render_clip(melspectrogram(speech_16k), speech_16k):
        diff = np.abs(frame.astype(np.int16) - idle)
        assert diff[outside].max() == 0, f"frame {info.index} changed outside the face region"
        change.append(diff[my0:my1, mx0:mx1].mean())
        a, b = clock.audio_span(info.index)
        envelope.append(rms(speech_16k[max(a, 0) : max(b, 0)]))
        if info.alpha == 0.0:
            silent.append(np.array_equal(frame, idle))
        infos.append(info)
    change, envelope = np.array(change), np.array(envelope)
    # The file has 0.5 s of silence at each end: there the mouth is closed, the photo exactly.
    assert len(silent) > 20 and all(silent)
    assert change.max() > 8  # it really opens
    r = np.corrcoef(change, envelope)[0, 1]
    assert r > 0.6, f"mouth movement follows the voice's loudness only weakly (r = {r:.2f})"
    # Smooth: the mouth never jumps between two frames by more than a fraction of its full travel. (Lips shut
    # for m/b/p within two or three frames at 30 fps, as real lips do, so one frame may take most of a closure.)
    assert np.abs(np.diff(change)).max() < 0.7 * change.max()


def test_mouth_shapes_are_smooth_and_closed_in_silence():
    lite = LiteLipSync()
    silence = np.full((4, 1, 80, 16), -4.0, np.float32)
    assert np.all(lite.mouth_shapes(silence)[:, 0] == 0.0)
    # A loud vowel that starts mid-window: opening rises over frames, never in one step from closed to open.
    tone = np.full((80, 64), -4.0, np.float32)
    tone[5:40, 24:] = 1.5
    shapes = lite.mouth_shapes(np.stack([tone[None, :, s : s + 16] for s in range(0, 48, 3)]))
    opening = shapes[:, 0]
    # Energy in the low bands only reads as a rounded vowel ("oo": 0.86-0.98 of the shape probability for every
    # trained network), whose lips open about half as wide as "a": 0.56-0.61 of the full opening.
    assert opening[0] == 0.0 and opening[-1] > 0.5
    assert np.abs(np.diff(opening)).max() < 0.45
    # While the sound only grows the mouth does not pulse (the shape read from it may change a little).
    assert np.all(np.diff(opening) >= -0.1)


def test_lower_faces_keep_the_lipsync_protocol(astronaut):
    lite = LiteLipSync()
    lite.set_face(astronaut)
    mels = np.full((2, 1, 80, 16), -4.0, np.float32)
    mels[1, 0, 5:40] = 1.5
    out = lite.lower_faces(mels)
    assert out.shape == (2, 3, 96, 96) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    crop = astronaut.face_input[3:6]
    assert np.abs(out[0] - crop).max() < 1 / 255 + 1e-6  # silent: the face as it is
    moved = np.abs(out[1] - crop).max(axis=0) > 8 / 255
    assert moved[60:].any() and not moved[:45].any()  # talking: only the lower face changes


def test_make_lipsync_falls_back_to_lite_without_weights(caplog):
    with caplog.at_level(logging.WARNING, logger="avatar_cam"):
        engine = make_lipsync("wav2lip")
    assert engine.name == "lite"
    assert FALLBACK_NOTE in caplog.text and "avatar-cam models fetch" in caplog.text
    with pytest.raises(ModelNotInstalledError, match="not installed") as err:
        make_lipsync("wav2lip", fallback=False)
    assert "--engine lite" in err.value.hint
    assert make_lipsync("lite").name == "lite"
    with pytest.raises(AvatarCamError, match="unknown"):
        make_lipsync("sadtalker")


def test_every_frame_window_is_drawn_the_same_live_and_offline(astronaut, speech_16k):
    """Batched (offline) and one-at-a-time (live) engine calls give the same mouths."""
    clock = FrameClock(25.0)
    mel = melspectrogram(speech_16k)
    wins = np.stack([mel_window(mel, clock.mel_start(k)) for k in range(clock.frame_count(len(speech_16k) / 16000))])
    batched = LiteLipSync().mouth_shapes(wins[:, None])
    single = LiteLipSync()
    one_by_one = np.concatenate([single.mouth_shapes(w[None, None]) for w in wins])
    assert np.array_equal(batched, one_by_one)
