"""The mp4 recorder (`render`, `run --record`): real ffmpeg, real files, decoded back with OpenCV."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from avatar_cam.errors import AvatarCamError
from avatar_cam.outputs.recorder import QUEUED_FRAMES, Mp4Recorder

W, H = 320, 180


def frame_with_square(k: int) -> np.ndarray:
    """A colour gradient with a white square whose position gives the frame's number."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x * 255 // W, y * 255 // H, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    img[20:60, 10 + 12 * k : 50 + 12 * k] = 255
    return img


def square_left_edge(img: np.ndarray) -> int:
    cols = np.nonzero((img[40] > 200).all(axis=1))[0]
    return int(cols[0])


def decode(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    return frames


def test_frames_come_back_in_order_with_their_colours(tmp_path):
    out = tmp_path / "clip.mp4"
    rec = Mp4Recorder(out, W, H, 25)
    sent = [frame_with_square(k) for k in range(20)]
    for f in sent:
        rec.send(f)
    assert not out.exists()  # the output appears only when complete
    rec.close()
    got = decode(out)
    assert len(got) == len(sent) and got[0].shape == (H, W, 3)
    assert [square_left_edge(g) for g in got] == [square_left_edge(f) for f in sent]
    # Colours survive the I420 hand-over and H.264 (BGR order kept: blue is the horizontal ramp).
    for g, f in zip(got, sent, strict=True):
        assert np.abs(g.astype(int) - f.astype(int)).mean() < 3.0
    assert got[0][90, 300, 0] > 200 and got[0][90, 10, 0] < 40


def test_send_does_not_wait_for_the_encoder(tmp_path):
    """The drawing thread hands frames over and goes on: up to QUEUED_FRAMES wait for ffmpeg, in order."""
    rec = Mp4Recorder(tmp_path / "clip.mp4", W, H, 25)
    rec._proc.send_signal(19)  # SIGSTOP: the encoder takes nothing for now
    try:
        for k in range(QUEUED_FRAMES):
            rec.send(frame_with_square(k % 20))  # would block here if send wrote to the stopped encoder
    finally:
        rec._proc.send_signal(18)  # SIGCONT
    rec.close()
    assert len(decode(tmp_path / "clip.mp4")) == QUEUED_FRAMES


def test_a_dead_encoder_is_reported_and_leaves_no_output(tmp_path):
    out = tmp_path / "clip.mp4"
    rec = Mp4Recorder(out, W, H, 25)
    rec._proc.kill()  # ffmpeg crashes (killed here: nothing else makes it die on demand)
    with pytest.raises(AvatarCamError, match="encoder stopped"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rec.send(frame_with_square(0))
    rec.abort()
    assert not out.exists() and not list(tmp_path.glob("*clip*")) and not rec._tmpdir.exists()


def test_a_frame_of_the_wrong_size_is_refused(tmp_path):
    rec = Mp4Recorder(tmp_path / "clip.mp4", W, H, 25)
    with pytest.raises(ValueError, match="320x180"):
        rec.send(np.zeros((H, W + 2, 3), np.uint8))
    rec.abort()
