"""Idle life on the real astronaut portrait: blinks, head sway and breathing while silent, repeatable, small,
smooth, confined to their region, and off when asked."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatar_cam.audio.mel import melspectrogram
from avatar_cam.lipsync.lite import LiteLipSync
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.renderer import FrameRenderer
from avatar_cam.video.compositor import OutputFormat
from avatar_cam.video.idle_motion import MAX_SWAY_PX, IdleSchedule, IdleSettings
from avatar_cam.video.portrait import Portrait

FPS = 30.0
SIZE = OutputFormat(1280, 720)


@pytest.fixture(scope="module")
def astronaut(astronaut_png) -> Portrait:
    return Portrait.load(astronaut_png)


def renderer(portrait, idle: IdleSettings, fmt: OutputFormat = SIZE) -> FrameRenderer:
    return FrameRenderer(LiteLipSync(), portrait, fmt, FrameClock(FPS), idle=idle)


def eye_boxes(r: FrameRenderer) -> list[tuple[int, int, int, int]]:
    out = []
    for e in r.compositor.layout.eyes:
        out.append((int(e.x - 1.5 * e.half_width), int(e.y - 3 * e.half_height), int(e.x + 1.5 * e.half_width) + 1,
                    int(e.y + 3 * e.half_height) + 1))
    return out


def test_blinks_come_at_irregular_intervals_and_the_eyes_reopen(astronaut):
    # The same sway and breathing with and without blinks: the difference is the blinks alone.
    blinking = renderer(astronaut, IdleSettings(blinks=True))
    open_eyed = renderer(astronaut, IdleSettings(blinks=False))
    boxes = eye_boxes(blinking)
    change, brighter = [], []
    for k in range(int(20 * FPS)):
        a, b = blinking.idle_at(k), open_eyed.idle_at(k)
        diff = np.abs(a.astype(np.int16) - b)
        change.append(max(diff[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in boxes))
        # Everywhere but the eyes, the two are the same picture.
        for x0, y0, x1, y1 in boxes:
            diff[y0:y1, x0:x1] = 0
        assert diff.max() == 0, f"frame {k}: a blink changed something outside the eyes"
        # A closing lid covers the dark iris and lashes with skin: the eye region gets brighter.
        brighter.append(min(float(a[y0:y1, x0:x1].mean()) - float(b[y0:y1, x0:x1].mean()) for x0, y0, x1, y1 in boxes))
    change, brighter = np.array(change), np.array(brighter)
    blinking_frames = change > 0
    starts = np.nonzero(blinking_frames[1:] & ~blinking_frames[:-1])[0] + 1
    ends = np.nonzero(~blinking_frames[1:] & blinking_frames[:-1])[0] + 1
    assert len(starts) >= 3, f"only {len(starts)} blinks in 20 s"
    assert len(starts) <= 12
    intervals = np.diff(starts) / FPS
    assert len(set(np.round(intervals, 2))) > 1, "blinks come like clockwork"
    assert intervals.max() < 7.0
    lengths = (ends[: len(starts)] - starts[: len(ends)]) / FPS
    assert np.all((lengths >= 0.06) & (lengths <= 0.25)), lengths  # about 150 ms each
    for s, e in zip(starts, ends[: len(starts)], strict=False):
        assert change[s:e].max() > 6, "the eye region hardly changes during a blink"
        assert brighter[s:e].max() > 4
    # Between blinks the eyes are exactly the open-eyed picture again.
    assert np.all(change[~blinking_frames] == 0)


def test_head_motion_is_small_slow_and_leaves_the_background_alone(astronaut):
    r = renderer(astronaut, IdleSettings(blinks=False))
    still = r.compositor.idle_frame
    x0, y0, x1, y1 = (int(v) for v in r.compositor.layout.box)
    ref = cv2.cvtColor(still[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY).astype(np.float32)
    window = cv2.createHanningWindow(ref.shape[::-1], cv2.CV_32F)
    rx0, ry0, rx1, ry1 = r.idle_region
    outside = np.ones(still.shape[:2], bool)
    outside[ry0:ry1, rx0:rx1] = False
    shifts, steps = [], []
    prev = None
    for k in range(0, int(20 * FPS)):
        frame = r.idle_at(k)
        assert np.array_equal(frame[outside], still[outside]), f"frame {k} moved something outside the idle region"
        if k % 3 == 0:
            face = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY).astype(np.float32)
            (dx, dy), _ = cv2.phaseCorrelate(ref, face, window)
            shifts.append(np.hypot(dx, dy))
        if prev is not None:
            steps.append(np.abs(frame.astype(np.int16) - prev).mean())
        prev = frame
    shifts = np.array(shifts)
    assert shifts.max() <= MAX_SWAY_PX + 0.5, f"the head moved {shifts.max():.1f} px"
    assert shifts.max() > 0.7, "the head never moves"
    assert np.abs(np.diff(shifts)).max() < 0.6  # slow: no shake between 0.1 s apart
    assert max(steps) < 0.5  # consecutive frames never jump
    # The corners of the frame (background) are outside the idle region.
    assert outside[:40, :40].all() and outside[:40, -40:].all()


def test_idle_is_repeatable_and_seeded(astronaut):
    a = renderer(astronaut, IdleSettings())
    b = renderer(astronaut, IdleSettings())
    for k in (300, 7, 151, 7, 42):  # any order: a frame depends only on its index
        assert np.array_equal(a.idle_at(k), b.idle_at(k))
    one, other = IdleSchedule(IdleSettings(seed=1)), IdleSchedule(IdleSettings(seed=2))
    assert one.blinks_until(30) != other.blinks_until(30)
    assert one.pose(12.3) != other.pose(12.3)


def test_idle_off_gives_the_photo_exactly_in_silence(astronaut):
    r = renderer(astronaut, IdleSettings.off(), OutputFormat(640, 360, mirror=True))
    assert r.idle is None and r.idle_region is None
    silence = np.zeros(16000 * 3, np.float32)
    frames = [f for f, _ in r.render_clip(melspectrogram(silence), silence)]
    assert len(frames) == 90 and all(np.array_equal(f, r.compositor.idle_frame) for f in frames)
    # ... and each kind can be turned off on its own: blinks only touch the eyes.
    r = renderer(astronaut, IdleSettings(blinks=True, head_motion=False, breathing=False))
    changed = np.zeros(r.idle_frame.shape[:2], bool)
    for k in range(int(12 * FPS)):
        changed |= (r.idle_at(k) != r.idle_frame).any(axis=2)
    assert changed.any()
    ys, xs = np.nonzero(changed)
    lay = r.compositor.layout
    assert ys.min() > lay.box[1] and ys.max() < lay.mouth_y  # only around the eyes


def test_talking_blends_in_and_out_without_a_jump(astronaut, speech_16k):
    """Speech fades in over the idle motion and back out of it: no frame-to-frame jump anywhere."""
    audio = np.concatenate([np.zeros(16000, np.float32), speech_16k, np.zeros(16000, np.float32)])
    r = renderer(astronaut, IdleSettings())
    x0, y0, x1, y1 = r.face_region
    prev, steps, talking = None, [], []
    for frame, info in r.render_clip(melspectrogram(audio), audio):
        if prev is not None:
            steps.append(np.abs(frame[y0:y1, x0:x1].astype(np.int16) - prev[y0:y1, x0:x1]).mean())
        talking.append(info.alpha)
        prev = frame
        if info.alpha == 0.0:
            # Silent frames are the idle animation exactly, talking or not before them.
            assert np.array_equal(frame, r.idle_at(info.index))
    talking = np.array(talking)
    assert (talking == 1.0).sum() > 60 and (talking == 0.0).sum() > 40
    assert talking[(talking > 0) & (talking < 1)].size > 0  # the gate ramps in and out
    assert max(steps) < 12  # the mouth region changes smoothly, also where talking starts and stops


def test_a_ten_hour_call_blinks_the_same_in_any_order():
    """Frames may be drawn in any order (a stalled mic restarts the idle count); the schedule must not care,
    and after hours it must still answer from a compact history."""
    a, b = IdleSchedule(IdleSettings(seed=5)), IdleSchedule(IdleSettings(seed=5))
    times = np.arange(0.0, 36000.0, 1 / 30)[::7]  # ten hours at 30 fps, every 7th frame
    forward = [a.blink(t) for t in times]
    backward = [b.blink(t) for t in times[::-1]][::-1]
    assert forward == backward
    assert 0.02 < np.mean(np.array(forward) > 0) < 0.2  # blinking a little of the time, never stuck shut
    assert 36000 / 8 < len(a.blinks_until(36000)) < 36000 / 2  # a blink every 2-8 s
