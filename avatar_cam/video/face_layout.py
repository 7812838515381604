"""Where the eyes and the mouth are in a portrait, found once per photo.

There is no landmark model to download: the eyes come from OpenCV's bundled Haar eye cascades, the mouth
from the lips' redness (CIELAB a*) below the nose, and whatever cannot be found is placed by the face
box's proportions (measured on frontal portraits: eyes at 28% of the box height, a quarter of its width in
from each side; the lips' meeting line at 69%; the chin at 91%). The lite engine and the idle motion both
draw from this layout, so it only needs to be good to a few pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from avatar_cam.video.face_detect import DETECT_LOCK, FaceBox, cascade
from avatar_cam.video.portrait import Portrait

EYE_Y, EYE_X, EYE_W = 0.28, 0.25, 0.15  # eye centre height, inset from each side, eye width (all of the box)
MOUTH_Y, MOUTH_W = 0.69, 0.38  # lips' meeting line, mouth width
CHIN_Y, NOSE_Y = 0.91, 0.55  # chin tip; bottom of the nose (nothing above it moves with the mouth)
WORK_WIDTH = 192  # px: faces wider than this are searched on a smaller copy


@dataclass(frozen=True)
class Eye:
    x: float  # centre
    y: float
    half_width: float
    half_height: float  # of the open eye: the upper lid travels about twice this to close it


@dataclass(frozen=True)
class FaceLayout:
    """Feature positions in some image's pixels (the photo's, or the output canvas's after `mapped`)."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    mouth_x: float
    mouth_y: float  # the line where the lips meet: above it moves up, below it moves down
    mouth_half_width: float
    mouth_curve: float  # how much higher the corners of the lips' line are than its middle (a smile: > 0)
    nose_y: float
    chin_y: float
    eyes: tuple[Eye, ...]  # left to right in the image
    found: tuple[str, ...] = ()  # which features came from the image rather than the box's proportions

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def mapped(self, sx: float, sy: float, ox: float, oy: float) -> FaceLayout:
        """The same layout in an image that is this one scaled by (sx, sy) and then shifted by (ox, oy)."""

        def x(v: float) -> float:
            return float(v * sx + ox)

        def y(v: float) -> float:
            return float(v * sy + oy)

        b = self.box
        return replace(
            self,
            box=(x(b[0]), y(b[1]), x(b[2]), y(b[3])),
            mouth_x=x(self.mouth_x), mouth_y=y(self.mouth_y), mouth_half_width=float(self.mouth_half_width * sx),
            mouth_curve=float(self.mouth_curve * sy),
            nose_y=y(self.nose_y), chin_y=y(self.chin_y),
            eyes=tuple(Eye(x(e.x), y(e.y), float(e.half_width * sx), float(e.half_height * sy)) for e in self.eyes),
        )


def locate(portrait: Portrait) -> FaceLayout:
    """The layout of the portrait's face, in `portrait.image` pixels. A few ms (faces are searched at
    most `WORK_WIDTH` px wide: features are large at that size, and big photos stay fast)."""
    b = portrait.box
    face = portrait.image[b.y0 : b.y1, b.x0 : b.x1]
    if b.width > WORK_WIDTH:
        face = cv2.resize(face, (WORK_WIDTH, max(1, round(b.height * WORK_WIDTH / b.width))), interpolation=cv2.INTER_AREA)
    h, w = face.shape[:2]
    small = FaceBox(0, 0, w, h)
    found = []
    eyes = _find_eyes(face, small)
    if eyes is None:
        eyes = tuple(Eye(f * w, EYE_Y * h, EYE_W / 2 * w, EYE_W / 6 * w) for f in (EYE_X, 1 - EYE_X))
    else:
        found.append("eyes")
    mouth = _find_mouth(face, small)
    if mouth is None:
        mouth = (w / 2, MOUTH_Y * h, MOUTH_W / 2 * w, 0.0)
    else:
        found.append("mouth")
    layout = FaceLayout((0.0, 0.0, float(w), float(h)), *mouth, NOSE_Y * h, CHIN_Y * h, eyes, tuple(found))
    return layout.mapped(b.width / w, b.height / h, b.x0, b.y0)


def _find_eyes(face: np.ndarray, b: FaceBox) -> tuple[Eye, Eye] | None:
    """The two Haar eye boxes in the upper face that sit where eyes can be: one each side, level, apart."""
    w, h = b.width, b.height
    grey = cv2.equalizeHist(cv2.cvtColor(face[: int(h * 0.5)], cv2.COLOR_BGR2GRAY))
    if w < 40:
        return None
    cands = []
    with DETECT_LOCK:
        for name in ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml"):
            boxes, votes = cascade(name).detectMultiScale2(grey, 1.05, 3, minSize=(max(8, w // 10),) * 2,
                                                            maxSize=(w // 3, w // 3))
            cands += [(x + ew / 2, y + eh / 2, ew, int(n)) for (x, y, ew, eh), n in zip(boxes, votes, strict=True)]
    left = [c for c in cands if 0.1 * w < c[0] < 0.45 * w and 0.12 * h < c[1] < 0.45 * h]
    right = [c for c in cands if 0.55 * w < c[0] < 0.9 * w and 0.12 * h < c[1] < 0.45 * h]
    if not left or not right:
        return None
    pairs = [(lc, rc) for lc in left for rc in right if abs(lc[1] - rc[1]) < 0.08 * h]
    if not pairs:
        return None
    lc, rc = max(pairs, key=lambda p: p[0][3] + p[1][3])
    grey = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return tuple(_eye_extent(grey, b, *c[:3]) for c in (lc, rc))


def _eye_extent(grey: np.ndarray, b: FaceBox, cx: float, cy: float, size: float) -> Eye:
    """The open eye inside a Haar eye box: the run of rows, then of columns, darker than the skin around
    (lash line, iris, corners). Falls back to the box's typical proportions if that run looks wrong."""
    h, w = grey.shape
    x0, x1 = max(0, int(cx - 0.5 * size)), min(w, int(cx + 0.5 * size) + 1)
    y0, y1 = max(0, int(cy - 0.3 * size)), min(h, int(cy + 0.3 * size) + 1)
    win = grey[y0:y1, x0:x1]
    default = Eye(float(b.x0 + cx), float(b.y0 + cy), 0.33 * size, 0.12 * size)
    if win.size < 16:
        return default
    dark = np.clip(np.percentile(win, 75) - win, 0, None)
    mid = slice(int(0.2 * win.shape[1]), int(0.8 * win.shape[1]) + 1)
    rows = _run(dark[:, mid].sum(axis=1), 0.35)
    if rows is None:
        return default
    cols = _run(dark[rows[0] : rows[1] + 1].sum(axis=0), 0.25)
    if cols is None:
        return default
    half_w, half_h = (cols[1] - cols[0] + 1) / 2, (rows[1] - rows[0] + 1) / 2
    if not (0.2 * size <= half_w <= 0.5 * size and 0.06 * size <= half_h <= 0.25 * size):
        return default
    # The Haar box is centred on the eye across; shadow at a corner can stretch the dark run to one side.
    return Eye(float(b.x0 + cx), float(b.y0 + y0 + (rows[0] + rows[1]) / 2 + 0.5), float(half_w), float(half_h))


def _run(profile: np.ndarray, frac: float) -> tuple[int, int] | None:
    """First and last index of the run around the profile's peak that stays above `frac` of the peak."""
    if profile.max() <= 0:
        return None
    peak = int(np.argmax(profile))
    above = profile >= frac * profile[peak]
    lo, hi = peak, peak
    while lo > 0 and above[lo - 1]:
        lo -= 1
    while hi < len(profile) - 1 and above[hi + 1]:
        hi += 1
    return lo, hi


def _find_mouth(face: np.ndarray, b: FaceBox) -> tuple[float, float, float, float] | None:
    """The lips' meeting line (centre x, y, half-width, curve), from where the lower face is redder than the
    cheeks. Each column's lip colour is centred on the line, so a parabola through those centres gives its
    curve. None for grey photos."""
    w, h = b.width, b.height
    lab = cv2.cvtColor(face, cv2.COLOR_BGR2Lab)
    red = lab[..., 1].astype(np.float32)
    skin = float(np.median(red[int(0.3 * h) : int(0.6 * h), int(0.2 * w) : int(0.8 * w)]))
    r0, r1 = int(0.58 * h), int(0.84 * h)
    c0, c1 = int(0.25 * w), int(0.75 * w)
    lip = np.clip(red[r0:r1, c0:c1] - skin - 3.0, 0, None)
    rows = lip.sum(axis=1)
    if rows.sum() < 0.02 * lip.size or rows.sum() < 1.0:  # no lip colour to go by
        return None
    y = r0 + float((rows * np.arange(r1 - r0)).sum() / rows.sum())
    cols = lip.sum(axis=0)
    xs = np.nonzero(cols > 0.25 * cols.max())[0]
    x = c0 + (xs[0] + xs[-1]) / 2.0
    half = max((xs[-1] - xs[0]) / 2.0 + 0.02 * w, 0.12 * w)
    if not (0.6 * h < y < 0.8 * h and 0.35 * w < x < 0.65 * w):
        return None
    half = min(half, 0.3 * w)
    mass = lip.sum(axis=0)
    centre = (lip * np.arange(r1 - r0)[:, None]).sum(axis=0) / np.maximum(mass, 1e-6)
    u2 = ((np.arange(c0, c1) - x) / half) ** 2
    keep = (mass > 0.1 * mass.max()) & (u2 <= 1.0)
    curve = 0.0
    if keep.sum() >= 5 and np.ptp(u2[keep]) > 0.3:
        sw = np.sqrt(mass[keep])
        fit = np.stack([u2[keep], np.ones(keep.sum())], 1) * sw[:, None]
        slope, middle = np.linalg.lstsq(fit, centre[keep] * sw, rcond=None)[0]
        curve = float(np.clip(-slope, -0.15 * half, 0.35 * half))
        y = r0 + float(np.clip(middle, y - r0 - 0.05 * h, y - r0 + 0.05 * h))
    return float(b.x0 + x), float(b.y0 + y), float(half), curve
