"""Paste the generated lower face back into the full-resolution portrait, fitted to the camera frame.

Everything that depends only on the photo and the output size (the fitted canvas, where the face and its
features land in it, the feathered blend mask) is computed once in `Compositor.__init__`; `compose` then
touches only the face region: about a millisecond at 1280x720.

A frame is drawn in three steps so other stages can draw in between, always on the unmirrored canvas:
`start()` (a fresh copy of the photo), `paste(...)` (the generated mouth), `finish(...)` (mirroring).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar_cam.video.face_layout import FaceLayout, locate
from avatar_cam.video.portrait import Portrait
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW


@dataclass(frozen=True)
class OutputFormat:
    width: int = 1280
    height: int = 720
    fit: str = "crop"  # "crop": fill the frame, cropping around the face; "pad": show the whole photo
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.fit not in ("crop", "pad"):
            raise ValueError(f"fit must be 'crop' or 'pad', not {self.fit!r}")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"output size must be even and at least 16x16, not {self.width}x{self.height}")


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 1280x720, not {text!r}") from None
    return w, h


def lower_face_mask(h: int, w: int) -> np.ndarray:
    """Blend weights over the face box: 1 on the mouth and jaw, 0 in the upper half and at the box edges.

    Wav2Lip redraws the lower half of its crop; blending only that half, feathered, hides the square, and lets
    the engine skip the upper half (`MOUTH_FIRST_ROW`): at any box height, scaling the 96 rows to `h` reads
    nothing above row 47 for the rows kept here.
    """
    mask = np.zeros((h, w), np.float32)
    # An ellipse over the lower face: from just under the nose to the chin, most of the box's width.
    center = (w // 2, int(h * 0.72))
    axes = (max(1, int(w * 0.36)), max(1, int(h * 0.26)))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1.0, thickness=-1)
    feather = max(3, int(0.08 * min(h, w))) | 1
    mask = cv2.GaussianBlur(mask, (feather * 2 + 1, feather * 2 + 1), 0)
    # Nothing above mid-face; from there a smooth ramp over a tenth of the box, and another to 0 at its bottom
    # edge (under the chin), so no edge of the box shows.
    y = np.arange(h, dtype=np.float32)
    top = np.clip((y - h // 2) / max(2, h // 10), 0.0, 1.0)
    bottom = np.clip((h - 1 - y) / max(2, h // 10), 0.0, 1.0)
    mask *= (_smoothstep(top) * _smoothstep(bottom))[:, None]
    return mask


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


class Compositor:
    """Turns the photo into camera frames: `idle_frame` (the photo as is) and `compose(lower_face, alpha)`.

    Owned by the pipeline's frame thread. `compose` returns a new array each call (sinks may keep it).
    """

    def __init__(self, portrait: Portrait, fmt: OutputFormat = OutputFormat()):
        self.fmt = fmt
        self.portrait = portrait
        self.canvas, scale, (ox, oy) = _fit(portrait, fmt)
        self.layout: FaceLayout = locate(portrait).mapped(scale, scale, ox, oy)  # in unmirrored canvas pixels
        b = portrait.box
        # The face box in canvas pixels (may be partly outside the canvas when cropping).
        x0, y0 = int(round(b.x0 * scale + ox)), int(round(b.y0 * scale + oy))
        x1, y1 = int(round(b.x1 * scale + ox)), int(round(b.y1 * scale + oy))
        self._box = (x0, y0, x1, y1)
        mask = lower_face_mask(y1 - y0, x1 - x0)
        # Clip the region to the canvas once; keep the matching part of the mask.
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(fmt.width, x1), min(fmt.height, y1)
        rows = np.nonzero(mask.max(axis=1) > 1e-3)[0]
        top = max(cy0, y0 + (int(rows[0]) if rows.size else 0))
        self._roi = (cx0, top, cx1, cy1)
        self._mask = mask[top - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None].copy()
        self._visible = cx1 > cx0 and cy1 > top
        self._unmirrored = self.canvas  # frames are drawn on this, then mirrored if asked
        if fmt.mirror:
            self.canvas = cv2.flip(self.canvas, 1)
        self.idle_frame = self.canvas
        self._orig_roi = self._crop_roi(self.canvas_unmirrored()).astype(np.float32)
        # For the colour match: the w^2 weights as one row, and the photo's w^2-weighted mean colour.
        mask_sq = (self._mask * self._mask).reshape(1, -1)
        self._mask_sq = mask_sq / max(float(mask_sq.sum()), 1e-6)
        self._orig_mean = (self._mask_sq @ self._orig_roi.reshape(-1, 3))[0]

    def canvas_unmirrored(self) -> np.ndarray:
        return self._unmirrored

    def _crop_roi(self, img: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self._roi
        return img[y0:y1, x0:x1]

    def output_region(self, region: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A region of the unmirrored canvas, as it shows in the output frames."""
        x0, y0, x1, y1 = region
        return (self.fmt.width - x1, y0, self.fmt.width - x0, y1) if self.fmt.mirror else region

    @property
    def blend_region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the canvas that `compose` may change (mirrored when the output is)."""
        return self.output_region(self._roi)

    @property
    def blend_mask(self) -> np.ndarray:
        """Full-frame blend weights (H, W) in [0, 1]: where a generated mouth can show."""
        full = np.zeros((self.fmt.height, self.fmt.width), np.float32)
        x0, y0, x1, y1 = self._roi
        full[y0:y1, x0:x1] = self._mask[..., 0]
        return full[:, ::-1] if self.fmt.mirror else full

    def compose(self, lower_face: np.ndarray, alpha: float = 1.0) -> np.ndarray:
        """lower_face: (3,R,96) float BGR in [0,1] from the engine (see `paste`); alpha: 0 = idle photo, 1 = mouth."""
        if alpha <= 0.0 or not self._visible:
            return self.idle_frame.copy()
        return self.finish(self.paste(self.start(), lower_face, alpha))

    def start(self) -> np.ndarray:
        """A new unmirrored copy of the photo's canvas, to draw a frame on."""
        return self._unmirrored.copy()

    def finish(self, out: np.ndarray) -> np.ndarray:
        """The drawn unmirrored canvas as an output frame."""
        return cv2.flip(out, 1) if self.fmt.mirror else out

    def paste(self, out: np.ndarray, lower_face: np.ndarray, alpha: float = 1.0) -> np.ndarray:
        """Blend a generated lower face into `out` (an unmirrored canvas from `start`), in place.

        lower_face: (3, R, 96), the bottom R >= 49 rows of the 96x96 face crop (all 96 from a full network).
        """
        if alpha <= 0.0 or not self._visible:
            return out
        rows = lower_face.shape[1]
        if rows < 96 - MOUTH_FIRST_ROW:
            raise ValueError(f"the blend needs rows {MOUTH_FIRST_ROW}..95 of the face, got only the last {rows}")
        x0, y0, x1, y1 = self._box
        face = np.zeros((96, 96, 3), np.float32)  # rows above the blend stay 0; the mask never reads them
        face[96 - rows :] = np.clip(lower_face.transpose(1, 2, 0) * 255.0, 0, 255)
        gen = cv2.resize(face, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        rx0, ry0, rx1, ry1 = self._roi
        gen = gen[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]
        # Match colour: shift the generated patch so that the blended frame's mean under the mask stays the
        # photo's. The blend adds w * (gen - photo), so weighted by w the shift must cancel the w^2-weighted mean.
        w = self._mask
        gen += self._orig_mean - (self._mask_sq @ gen.reshape(-1, 3))[0]  # (a matrix product: 15x faster than sum)
        weight = w * float(min(alpha, 1.0))
        patch = self._orig_roi + (gen - self._orig_roi) * weight
        out[ry0:ry1, rx0:rx1] = np.clip(patch + 0.5, 0, 255).astype(np.uint8)
        return out


def _fit(portrait: Portrait, fmt: OutputFormat) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Scale and place the photo in the output frame; returns canvas, scale and the photo's offset in it."""
    img = portrait.image
    h, w = img.shape[:2]
    W, H = fmt.width, fmt.height
    if fmt.fit == "crop":
        scale = max(W / w, H / h)
        sw, sh = int(round(w * scale)), int(round(h * scale))
        b = portrait.box
        # Centre the face horizontally; put it a little above the middle, as a webcam framing would.
        fx, fy = (b.x0 + b.x1) / 2 * scale, (b.y0 + b.y1) / 2 * scale
        ox = -int(np.clip(fx - W / 2, 0, sw - W))
        oy = -int(np.clip(fy - H * 0.45, 0, sh - H))
        scaled = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.ascontiguousarray(scaled[-oy : -oy + H, -ox : -ox + W])
        return canvas, scale, (ox, oy)
    scale = min(W / w, H / h)
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    ox, oy = (W - sw) // 2, (H - sh) // 2
    # Pad with a blurred, darkened copy of the photo rather than black bars.
    cover = max(W / w, H / h)
    bg = cv2.resize(img, (int(np.ceil(w * cover)), int(np.ceil(h * cover))), interpolation=cv2.INTER_AREA)
    by, bx = (bg.shape[0] - H) // 2, (bg.shape[1] - W) // 2
    canvas = cv2.GaussianBlur(bg[by : by + H, bx : bx + W], (0, 0), 25) // 2
    scaled = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas[oy : oy + sh, ox : ox + sw] = scaled
    return np.ascontiguousarray(canvas), scale, (ox, oy)
