"""Face detection with OpenCV's bundled Haar cascades: offline, nothing to download.

`detect_faces` finds confirmed frontal faces; `looks_like_cat` tells a cat's face from no face (to say so);
`cascade` and `DETECT_LOCK` are shared with face_layout.py, which finds the eyes with the same cascades.
Any thread may call these: the lock serialises the classifiers, which OpenCV does not promise are thread-safe.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from avatar_cam.errors import PortraitError

DETECT_SIDE = 640  # Haar runs on a copy this long: portrait faces are large, and it keeps detection ~50 ms
HINT_MANUAL = "set a face box manually in the settings (face_box = [x0, y0, x1, y1])"
DETECT_LOCK = threading.Lock()  # OpenCV does not promise that one CascadeClassifier may run on two threads at once


@dataclass(frozen=True)
class FaceBox:
    """A box in pixels of `Portrait.image`, half-open: [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@cache
def cascade(name: str) -> cv2.CascadeClassifier:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    c = cv2.CascadeClassifier(folder + name) if folder and hasattr(cv2, "CascadeClassifier") else None
    if c is None or c.empty():
        raise PortraitError(f"OpenCV {cv2.__version__} has no bundled face detector ({name})",
                            "pip install 'opencv-python>=4.8,<5' (5.x dropped the Haar cascades), or " + HINT_MANUAL)
    return c


def detect_faces(bgr: np.ndarray) -> list[FaceBox]:
    """Raw (confirmed) Haar face boxes in pixels of `bgr` (uint8 BGR or grey), largest first. No Wav2Lip framing."""
    grey = bgr if bgr.ndim == 2 else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    H, W = grey.shape
    s = min(1.0, DETECT_SIDE / max(grey.shape))
    small = cv2.equalizeHist(cv2.resize(grey, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else grey)
    m = max(24, round(0.04 * max(small.shape)))  # 24 px is the cascade's window; 4% ignores faces in the crowd
    with DETECT_LOCK:
        cands, votes = cascade("haarcascade_frontalface_alt2.xml").detectMultiScale2(small, 1.1, 3, minSize=(m, m))
        # A real face is found at many neighbouring positions and scales (24-45 votes on our test faces,
        # <= 7 on textures such as coins, bricks and cells), and also has an eye or is seen by a second cascade.
        cands = [tuple(int(v) for v in c) for c, n in zip(cands, votes, strict=True) if n >= 8]
        others = None
        kept = []
        for x, y, w, h in cands:
            if not _has_eye(small[y : y + h * 5 // 8, x : x + w]):
                if others is None:
                    others, ov = cascade("haarcascade_frontalface_default.xml").detectMultiScale2(small, 1.1, 3, minSize=(m, m))
                    others = [o for o, n in zip(others, ov, strict=True) if n >= 3]
                if not any(_iou((x, y, w, h), o) > 0.4 for o in others):
                    continue
            kept.append(FaceBox(math.floor(x / s), math.floor(y / s), min(W, math.ceil((x + w) / s)), min(H, math.ceil((y + h) / s))))
    kept.sort(key=lambda b: b.width * b.height, reverse=True)
    # Drop a box whose centre lies inside a bigger one: the same face found twice, not a second person.
    out: list[FaceBox] = []
    for b in kept:
        cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        if not any(o.x0 <= cx < o.x1 and o.y0 <= cy < o.y1 for o in out):
            out.append(b)
    return out


def _has_eye(upper_face: np.ndarray) -> bool:
    w = upper_face.shape[1]  # below 40 px the eyes are smaller than the eye cascade's 20 px window
    return w >= 40 and any(len(cascade(name).detectMultiScale(upper_face, 1.1, 3, minSize=(w // 8, w // 8), maxSize=(w // 2, w // 2)))
                           for name in ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml"))


def _iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def looks_like_cat(bgr: np.ndarray) -> bool:
    """Both bundled cat cascades on a 240 px copy with a border: close-up pet photos cut off the ears the
    cascades need, and the border gives them back some context. Votes summed over three looks must reach 7
    (skimage's chelsea scores 10-14 across re-encodes and flips; non-cat test images at most 4)."""
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    votes = 0
    with DETECT_LOCK:
        for name, pad in (("haarcascade_frontalcatface.xml", 0.15), ("haarcascade_frontalcatface_extended.xml", 0.15),
                          ("haarcascade_frontalcatface_extended.xml", 0.3)):
            p = int(pad * max(grey.shape))
            g = cv2.copyMakeBorder(grey, p, p, p, p, cv2.BORDER_REPLICATE)
            s = 240 / max(g.shape)
            g = cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            _, n = cascade(name).detectMultiScale2(g, 1.05, 1, minSize=(60, 60))
            votes += max((int(v) for v in n), default=0)
    return votes >= 7
