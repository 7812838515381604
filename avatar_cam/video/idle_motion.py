"""Life in a still face: blinks, a slow sway of the head, breathing. For every engine, talking or silent.

Everything is a pure function of the settings' seed and the frame's time, so a live run over a file and an
offline render of it give the same frames, and talking frames carry the same motion as idle ones (speech
fades in and out without a jump). Motion is drawn by warping the photo, never by pasting anything on it:
- blinks: the upper lid slides down over the eye (the skin above the eye is stretched down to cover it, the
  lash line moves with the lid's edge), the lower lid rises a little; about every 2-6 s, ~160 ms each,
  sometimes twice in a row;
- head: sideways/up-down drift and a small tilt about the neck, from a few incommensurate slow sines, at
  most `MAX_SWAY_PX`; the head's weight fades to 0 over the hair's edge and the neck, so the background
  and the body stay put (it is not a camera move);
- breathing: the shoulders rise and fall ~1-2 px every ~4 s, the head follows a little.
The per-photo fields (weights, eye boxes) are built once; the head and body move smoothly (their weights fade
over tens of pixels), so a frame's displacement is computed on a grid COARSE times coarser and scaled up; and the
region is warped in up to three row bands, each as narrow as its moving pixels (head, neck, shoulders: ~75% of the
bounding box). A frame costs two small eye remaps during blinks and one remap per band: 3.4 ms of CPU at
1280x720 over 300 frames with their blinks on this 2-core machine, against 4.1 ms as one region (BENCHMARKS.md,
session 5).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from dataclasses import dataclass

import cv2
import numpy as np

from avatar_cam.video.face_layout import FaceLayout

MAX_SWAY_PX = 3.5  # the head never moves further than this from where the photo has it
BLINK_EVERY = (2.0, 6.0)  # seconds between blinks (irregular within this range)
BLINK_SECONDS = (0.14, 0.18)
DOUBLE_BLINK = 0.12  # share of blinks followed at once by a second one
BREATH_SECONDS = 4.2
COARSE = 4  # the head and body displacement is computed on a grid this much coarser than the picture
SOURCE_MARGIN = 8  # px: farther than any motion reaches (sway <= 3.5, breathing <= 2, bilinear 1)


@dataclass(frozen=True)
class IdleSettings:
    """Which kinds of idle motion to draw. `seed` picks the (repeatable) blink times and sway."""

    blinks: bool = True
    head_motion: bool = True
    breathing: bool = True
    seed: int = 1

    @property
    def any(self) -> bool:
        return self.blinks or self.head_motion or self.breathing

    @classmethod
    def off(cls) -> IdleSettings:
        return cls(False, False, False)


@dataclass(frozen=True)
class IdlePose:
    dx: float  # head shift, in units of the sway amplitude (about -1 .. 1)
    dy: float
    tilt: float
    breath: float  # 0 (out) .. 1 (in)
    blink: float  # 0 (open) .. 1 (closed)


def _smooth(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class IdleSchedule:
    """When the face blinks and how it sways: a pure function of the seed and the time."""

    def __init__(self, settings: IdleSettings):
        self.settings = settings
        rng = np.random.default_rng(settings.seed)
        # Three sines per axis, each a different slow rate: the sum never visibly repeats.
        self._sway = [(rng.uniform([0.05, 0.11, 0.21], [0.09, 0.17, 0.29]), rng.uniform(0, 2 * np.pi, 3))
                      for _ in range(3)]
        self._breath_phase = rng.uniform(0, 2 * np.pi, 2)
        self._blink_rng = np.random.default_rng([settings.seed, 1])
        # Every blink so far, extended on demand: frames may be drawn in any order and must not depend on it.
        # Two flat arrays (16 bytes a blink, ~16 kB an hour) searched by bisection, so an hours-long call
        # costs each frame the same.
        self._starts, self._durations = array("d"), array("d")
        self._next = self._blink_rng.uniform(0.8, 3.0)

    def _extend(self, t: float) -> None:
        rng = self._blink_rng
        while self._next < t + 1.0:
            start = self._next
            self._starts.append(start)
            self._durations.append(rng.uniform(*BLINK_SECONDS))
            if rng.random() < DOUBLE_BLINK:
                start += rng.uniform(0.3, 0.45)
                self._starts.append(start)
                self._durations.append(rng.uniform(*BLINK_SECONDS))
            # Intervals cluster around 3-4 s with a long tail, as people's do; clipped to the range.
            self._next = start + float(np.clip(BLINK_EVERY[0] + rng.gamma(2.2, 0.75), *BLINK_EVERY))

    def blinks_until(self, t: float) -> list[tuple[float, float]]:
        """All (start, duration) of blinks starting before `t` seconds."""
        self._extend(t)
        n = bisect_right(self._starts, t)
        return list(zip(self._starts[:n], self._durations[:n], strict=True))

    def blink(self, t: float) -> float:
        """How closed the lids are at `t` (0 open, 1 shut)."""
        self._extend(t)
        i = bisect_right(self._starts, t) - 1
        if i < 0 or t - self._starts[i] >= self._durations[i]:
            return 0.0
        tau = (t - self._starts[i]) / self._durations[i]
        # Lids close fast, rest shut a moment, and open more slowly.
        if tau < 0.35:
            return float(_smooth(tau / 0.35))
        return 1.0 if tau < 0.45 else float(1.0 - _smooth((tau - 0.45) / 0.55))

    def pose(self, t: float) -> IdlePose:
        s = self.settings

        def wave(i: int) -> float:
            freq, phase = self._sway[i]
            return float(np.dot([1.0, 0.55, 0.3], np.sin(2 * np.pi * freq * t + phase)) / 1.85)

        head = (wave(0), wave(1), wave(2)) if s.head_motion else (0.0, 0.0, 0.0)
        breath = 0.0
        if s.breathing:
            phase = t / BREATH_SECONDS + 0.08 * math.sin(2 * math.pi * t / 17.0 + self._breath_phase[0])
            breath = 0.5 - 0.5 * math.cos(2 * math.pi * phase)
        return IdlePose(*head, breath, self.blink(t) if s.blinks else 0.0)


class IdleMotion:
    """Draws the idle motion of one photo on its output canvas (unmirrored canvas pixels).

    `region` (x0, y0, x1, y1) bounds everything `apply` may change; `mask` is 1 where it may.
    """

    def __init__(self, shape: tuple[int, ...], layout: FaceLayout, settings: IdleSettings, fps: float):
        self.settings = settings
        self.fps = fps
        self.schedule = IdleSchedule(settings)
        H, W = shape[:2]
        self._shape = (H, W)
        bx0, by0, bx1, by1 = layout.box
        bw, bh = layout.width, layout.height
        cx = (bx0 + bx1) / 2
        # Sway amplitudes scale with the face, capped so the head never moves more than MAX_SWAY_PX.
        scale = min(1.0, MAX_SWAY_PX / (0.0125 * bh))
        self._amp = (0.007 * bh * scale, 0.0045 * bh * scale, 0.004 * scale)  # px, px, radians
        self._breath_px = min(0.005 * bh, 2.0)
        self._pivot = (cx, by1)  # the head tilts about the neck
        head_y, ax, ay = by0 + 0.3 * bh, 0.8 * bw, 0.75 * bh  # an ellipse over head and hair
        # Where any weight can be non-zero: the head's feathered ellipse and the body's trapezoid below it.
        boxes = []
        if settings.head_motion:
            boxes.append((cx - 1.35 * ax, head_y - 1.35 * ay, cx + 1.35 * ax, head_y + 1.35 * ay))
        if settings.breathing:
            boxes.append((cx - 1.6 * bw, by1 - 0.1 * bh, cx + 1.6 * bw, H))
        self._warp = None
        self.mask = np.zeros((H, W), np.float32)
        if boxes:
            x0, y0 = max(0, int(min(b[0] for b in boxes))), max(0, int(min(b[1] for b in boxes)))
            x1, y1 = min(W, int(math.ceil(max(b[2] for b in boxes))) + 1), min(H, int(math.ceil(max(b[3] for b in boxes))) + 1)
            if x1 > x0 and y1 > y0:
                ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
                head = np.zeros_like(xs)
                if settings.head_motion:
                    rho = np.hypot((xs - cx) / ax, (ys - head_y) / ay)
                    head = (1.0 - _smooth((rho - 0.85) / 0.5)).astype(np.float32)
                body = np.zeros_like(xs)
                if settings.breathing:
                    # The body below the face: a trapezoid from the neck to the frame's bottom, feathered.
                    half = bw * (0.6 + 0.7 * np.clip((ys - by1) / (0.8 * bh), 0, 1))
                    body = (_smooth((ys - (by1 - 0.1 * bh)) / (0.4 * bh))
                            * (1.0 - _smooth((np.abs(xs - cx) - half) / (0.3 * bw)))).astype(np.float32)
                px, py = self._pivot
                fields = (head, head * (ys - py), head * (xs - px), body)
                top = max(0, y0 - SOURCE_MARGIN)  # the first row a band's motion can read
                self._warp = (top, min(H, y1 + SOURCE_MARGIN),
                              [_Band(xs, ys, fields, band, top) for band in _bands((head > 0) | (body > 0))])
                self.mask[y0:y1, x0:x1] = (head > 0) | (body > 0)
        self._eyes = [_EyeLid(e, shape) for e in layout.eyes] if settings.blinks else []
        eye_boxes = [e.box for e in self._eyes if e.box is not None]
        for x0, y0, x1, y1 in eye_boxes:
            self.mask[y0:y1, x0:x1] = 1.0
        boxes = eye_boxes + [band.rect for band in self._warp[2]] if self._warp is not None else eye_boxes
        self.region = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                       max(b[3] for b in boxes)) if boxes else (0, 0, 0, 0)

    def pose(self, index: int) -> IdlePose:
        return self.schedule.pose(index / self.fps)

    def apply(self, img: np.ndarray, index: int) -> None:
        """Draw frame `index`'s idle motion on `img` (the composed canvas), in place."""
        p = self.pose(index)
        if p.blink > 0.0:
            for eye in self._eyes:
                eye.close(img, p.blink)
        if self._warp is None:
            return
        top, bottom, bands = self._warp
        ax, ay, at = self._amp
        dx, dy, tilt = p.dx * ax, p.dy * ay - 0.4 * self._breath_px * p.breath, p.tilt * at
        # Each band reads from a copy of the rows the motion can reach (the bands write the picture as they go).
        source = img[top:bottom].copy()
        for band in bands:
            band.draw(img, source, (-dx, tilt, -dy, -tilt, self._breath_px * p.breath))


def _bands(moving: np.ndarray, most: int = 3, step: int = 8) -> list[tuple[int, int, int, int]]:
    """Row bands (r0, r1, c0, c1), each as narrow as its own rows' moving pixels, covering every True of `moving`:
    the split into at most `most` bands at `step`-row boundaries with the least area (the head and the shoulders
    below it are of different widths: ~75% of the bounding box here)."""
    h, w = moving.shape
    rows = moving.any(axis=1)
    first = np.where(rows, moving.argmax(axis=1), w)
    last = np.where(rows, w - 1 - moving[:, ::-1].argmax(axis=1), -1)
    cuts = [*range(0, h, step), h]
    n = len(cuts) - 1
    chunk_first = [int(first[cuts[i] : cuts[i + 1]].min()) for i in range(n)]
    chunk_last = [int(last[cuts[i] : cuts[i + 1]].max()) for i in range(n)]
    extent = {}  # (i, j) -> (area, c0, c1) of chunks i..j-1 as one band
    for i in range(n):
        lo, hi = w, -1
        for j in range(i + 1, n + 1):
            lo, hi = min(lo, chunk_first[j - 1]), max(hi, chunk_last[j - 1])
            extent[i, j] = ((cuts[j] - cuts[i]) * (hi + 1 - lo), lo, hi + 1) if hi >= lo else (0, 0, 0)
    best = {(0, 0): (0, [])}  # (bands used, chunks covered) -> (area, splits)
    for k in range(1, most + 1):
        for j in range(1, n + 1):
            options = [(best[k - 1, i][0] + extent[i, j][0], best[k - 1, i][1] + [(i, j)])
                       for i in range(j) if (k - 1, i) in best]
            if options:
                best[k, j] = min(options, key=lambda o: o[0])
    splits = min((best[k, n] for k in range(1, most + 1) if (k, n) in best), key=lambda o: o[0])[1]
    return [(cuts[i], cuts[j], extent[i, j][1], extent[i, j][2]) for i, j in splits if extent[i, j][0] > 0]


class _Band:
    """The motion of one band of the region: its pixel coordinates, and its weights on the coarse grid over the
    band and a margin around it (so scaling them up never clamps at the band's own edges)."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray, fields: tuple[np.ndarray, ...], band: tuple[int, int, int, int],
                 top: int):
        r0, r1, c0, c1 = band
        h, w = xs.shape
        p0, p1, q0, q1 = max(0, r0 - 2 * COARSE), min(h, r1 + 2 * COARSE), max(0, c0 - 2 * COARSE), min(w, c1 + 2 * COARSE)
        self.size = (q1 - q0, p1 - p0)
        coarse = (max(2, -(-(q1 - q0) // COARSE)), max(2, -(-(p1 - p0) // COARSE)))
        self.fields = [cv2.resize(np.ascontiguousarray(f[p0:p1, q0:q1], np.float32), coarse, interpolation=cv2.INTER_AREA)
                       for f in fields]
        self.crop = (slice(r0 - p0, r1 - p0), slice(c0 - q0, c1 - q0))
        self.x, self.y = xs[r0:r1, c0:c1].copy(), ys[r0:r1, c0:c1] - np.float32(top)  # y in the source's rows
        self.rect = (int(xs[0, c0]), int(ys[r0, 0]), int(xs[0, c0]) + c1 - c0, int(ys[r0, 0]) + r1 - r0)

    def draw(self, img: np.ndarray, source: np.ndarray, k: tuple[float, ...]) -> None:
        """Warp this band of `img` from `source` (its rows from `top` on), the displacement's weights times `k`
        (head->x, head_y->x, head->y, head_x->y, body->y)."""
        head, head_y, head_x, body = self.fields
        move_x = head * k[0] + head_y * k[1]
        move_y = head * k[2] + head_x * k[3] + body * k[4]

        def full(move):
            return cv2.resize(move, self.size, interpolation=cv2.INTER_LINEAR)[self.crop]

        map_x = cv2.add(self.x, full(move_x))
        map_y = cv2.add(self.y, full(move_y))
        x0, y0, x1, y1 = self.rect
        img[y0:y1, x0:x1] = cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class _EyeLid:
    """One eye's blink: per column, the upper lid's edge slides down to a closed line just below the eye's
    middle, stretching the lid skin above it; the eye itself is covered, not squashed."""

    def __init__(self, eye, shape):
        H, W = shape[:2]
        ew, eh = eye.half_width * 1.1, max(eye.half_height, 1.0)
        self.skin = 1.3 * eh  # lid skin above the eye stretched down over it (stops below the brow)
        x0, x1 = max(0, int(eye.x - ew) - 1), min(W, int(math.ceil(eye.x + ew)) + 2)
        y0 = max(0, int(eye.y - eh - self.skin) - 1)
        y1 = min(H, int(math.ceil(eye.y + eh + self.skin)) + 2)
        self.box = (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
        if self.box is None:
            return
        u = (np.arange(x0, x1, dtype=np.float32) - eye.x) / ew
        q = np.clip(1 - u * u, 0, None) ** 0.6  # the eye's almond: fully open in the middle, shut at the corners
        self._X, self._Y = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        self._upper = (eye.y - eh * q)[None, :]  # open lid edges
        self._lower = (eye.y + eh * q)[None, :]
        self._shut = (eye.y + 0.55 * eh * q)[None, :]  # where they meet: the lower lid barely rises
        self._top = self._upper - self.skin
        self._bottom = self._lower + self.skin

    def close(self, img: np.ndarray, amount: float) -> None:
        if self.box is None:
            return
        x0, y0, x1, y1 = self.box
        ys, top, bottom = self._Y, self._top, self._bottom
        upper = self._upper + amount * (self._shut - self._upper)
        lower = self._lower + amount * (self._shut - self._lower)
        # Above the moved upper edge: the lid skin [top, upper edge] stretched over [top, moved edge]; the
        # same below for the lower lid. Between the moved edges the eye shows as it is (covered, not squashed).
        lid = top + (ys - top) * (self._upper - top) / np.maximum(upper - top, 1e-3)
        under = bottom - (bottom - ys) * (bottom - self._lower) / np.maximum(bottom - lower, 1e-3)
        src = np.where((ys >= top) & (ys <= upper), lid, np.where((ys >= lower) & (ys <= bottom), under, ys))
        img[y0:y1, x0:x1] = cv2.remap(img, self._X, src.astype(np.float32), cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REPLICATE)
