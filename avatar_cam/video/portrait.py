"""Portrait preparation, done once per photo: decode, find the face, frame it the way Wav2Lip was trained.

`Portrait.load(path)` runs on whichever thread switches the photo (tray, CLI, control socket) and returns
a value that is never modified afterwards, so the frame thread can take it without a lock.
Face detection is face_detect.py's (OpenCV's bundled Haar cascades: offline, nothing to download).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from avatar_cam.errors import PortraitError
from avatar_cam.video.face_detect import HINT_MANUAL, FaceBox, detect_faces, looks_like_cat

MIN_FACE = 64  # px: a smaller face gives a 96x96 crop that is mostly interpolation
MIN_BOX = 32  # px: smallest manual face box we accept
# A Haar box runs from mid-forehead to between the lower lip and the chin; Wav2Lip's S3FD box ends at the
# chin and the reference pipeline adds 10 px below it at its ~200 px face scale. On skimage's astronaut the
# chin is 16% of the Haar box height below the box, so the bottom moves down by CHIN (reach the chin) plus
# PAD (10 px per 200 px of face). Top and sides stay: they already match S3FD's framing closely enough.
CHIN, PAD = 0.17, 0.05
BACKGROUND = 128  # transparent pixels become mid grey: a neutral backdrop that neither glows nor reads as a face edge
HINT_PHOTO = "choose a clear, front-facing photo of one person (JPEG or PNG)"
HINT_BOX = f"{HINT_PHOTO}, or {HINT_MANUAL}"


@dataclass
class Portrait:
    path: Path | None
    image: np.ndarray  # full-resolution BGR uint8 (H, W, 3), contiguous
    box: FaceBox  # the Wav2Lip crop region: tight face box, chin included, clipped to the image
    face_input: np.ndarray  # (6, 96, 96) float32 BGR/255: 0-2 the crop with rows 48.. zeroed, 3-5 the crop
    notes: list[str] = field(default_factory=list)  # things to tell the user

    @classmethod
    def load(cls, path, face_box: tuple[int, int, int, int] | None = None, max_side: int = 4096) -> Portrait:
        path = Path(path).expanduser()
        rgb, orig, notes = _read_rgb(path, max_side)
        return _build(cv2.cvtColor(_fit_side(rgb, max_side), cv2.COLOR_RGB2BGR), orig, face_box, max_side, path, notes)

    @classmethod
    def from_array(cls, bgr: np.ndarray, face_box=None, max_side: int = 4096, path=None) -> Portrait:
        bgr = np.array(bgr)  # a copy: the caller may reuse its buffer, the Portrait must not change
        if bgr.dtype != np.uint8 or not (bgr.ndim == 2 or (bgr.ndim == 3 and bgr.shape[2] in (1, 3, 4))):
            raise PortraitError(f"{path or 'the image'}: expected 8-bit grey, BGR or BGRA pixels, got {bgr.dtype} {bgr.shape}", HINT_PHOTO)
        if bgr.ndim == 2 or bgr.shape[2] == 1:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        elif bgr.shape[2] == 4:
            bgr = _flatten(bgr[:, :, :3], bgr[:, :, 3])
        return _build(_fit_side(bgr, max_side), bgr.shape[1::-1], face_box, max_side, Path(path) if path else None, [])


def _fit_side(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def _build(bgr, orig: tuple[int, int], face_box, max_side: int, path: Path | None, notes: list[str]) -> Portrait:
    """bgr: the photo already scaled to max_side; orig: its upright (w, h) before scaling."""
    name = str(path) if path else "the image"
    if min(bgr.shape[:2]) < MIN_FACE:
        raise PortraitError(f"{name}: the image is only {orig[0]}x{orig[1]} pixels, too small to hold a face "
                            f"(need at least {MIN_FACE} px)", HINT_PHOTO)
    if bgr.shape[1::-1] != tuple(orig):
        notes.append(f"image was {orig[0]}x{orig[1]}; scaled to {max_side} px on the long side")
    bgr = np.ascontiguousarray(bgr)
    box = _manual_box(face_box, orig, bgr.shape, name) if face_box is not None else _auto_box(bgr, name, notes)
    return Portrait(path, bgr, box, _face_input(bgr, box), notes)


def _read_rgb(path: Path, max_side: int) -> tuple[np.ndarray, tuple[int, int], list[str]]:
    """Decode with Pillow into upright 8-bit RGB. Returns pixels, the upright original (w, h), and notes."""
    if not path.exists():
        raise PortraitError(f"photo not found: {path}", "check the path, or " + HINT_PHOTO)
    if not path.is_file():
        raise PortraitError(f"{path} is not a file", HINT_PHOTO)
    if path.stat().st_size == 0:
        raise PortraitError(f"{path} is empty (0 bytes)", "the copy may have failed; " + HINT_PHOTO)
    notes: list[str] = []
    try:
        # Pillow warns from 89 MP and refuses from 179 MP (decompression bomb); we accept anything it decodes.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                ow, oh = im.size
                s = min(1.0, max_side / max(ow, oh))
                # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster and smaller for huge photos.
                im.draft(None, (math.ceil(ow * s), math.ceil(oh * s)))
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # noqa: BLE001 -- a broken EXIF block should not make good pixels unusable
                    notes.append("could not read the photo's orientation tag; using it as stored")
                rgb = _to_rgb8(im)
    except Image.DecompressionBombError as e:
        raise PortraitError(f"{path} is too large to open safely ({e})", "resize the photo to under 100 megapixels") from None
    except Image.UnidentifiedImageError:
        raise PortraitError(f"{path} is not an image Pillow can read", HINT_PHOTO) from None
    except MemoryError:
        raise PortraitError(f"{path} is too large to fit in memory", "resize the photo and try again") from None
    except Exception as e:  # noqa: BLE001 -- Pillow's decoders raise many types (OSError, SyntaxError, ValueError...) for bad data
        raise PortraitError(f"{path} is damaged or incomplete and cannot be decoded ({type(e).__name__}: {e})",
                            "open it in an image viewer and re-save it, or " + HINT_PHOTO) from None
    if (rgb.shape[1] > rgb.shape[0]) != (ow > oh):  # EXIF rotated by 90 degrees: report upright sizes
        ow, oh = oh, ow
    return rgb, (ow, oh), notes


def _to_rgb8(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):  # 16-bit / 32-bit grey: convert("L") would clip
        a = np.asarray(im, dtype=np.float32)
        top = 1.0 if im.mode == "F" and a.max() <= 1.0 else 255.0 if a.max() <= 255 else 65535.0
        grey = np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"))
        return _flatten(rgba[:, :, :3], rgba[:, :, 3])
    # L, P, 1, CMYK, YCbCr, LAB... (Pillow undoes Adobe's CMYK inversion); skip the copy when already RGB.
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _flatten(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[:, :, None].astype(np.float32) / 255.0
    return (color * a + BACKGROUND * (1.0 - a) + 0.5).astype(np.uint8)


def _manual_box(face_box, orig: tuple[int, int], shape, name: str) -> FaceBox:
    try:
        x0, y0, x1, y1 = (int(v) for v in face_box)
    except (TypeError, ValueError):
        raise PortraitError(f"face_box {face_box!r} for {name} is not four whole numbers [x0, y0, x1, y1]", HINT_BOX) from None
    ow, oh = orig
    if x1 <= x0 or y1 <= y0 or x1 <= 0 or y1 <= 0 or x0 >= ow or y0 >= oh:
        raise PortraitError(f"face_box {[x0, y0, x1, y1]} is empty or outside {name} ({ow}x{oh} pixels)", HINT_BOX)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, ow), min(y1, oh)
    if min(x1 - x0, y1 - y0) < MIN_BOX:
        raise PortraitError(f"face_box {[x0, y0, x1, y1]} (inside {name}) is smaller than {MIN_BOX} px", HINT_BOX)
    sx, sy = shape[1] / ow, shape[0] / oh  # the box is in original pixels; the image may have been scaled
    return FaceBox(round(x0 * sx), round(y0 * sy), max(round(x1 * sx), round(x0 * sx) + 1), max(round(y1 * sy), round(y0 * sy) + 1))


def _auto_box(bgr: np.ndarray, name: str, notes: list[str]) -> FaceBox:
    faces = detect_faces(bgr)
    if not faces:
        if looks_like_cat(bgr):
            raise PortraitError(f"no human face found in {name}: this looks like a cat's face, not a person's",
                                "cats are lovely, but the lip-sync model only knows human mouths; " + HINT_BOX)
        raise PortraitError(f"no face found in {name}", HINT_BOX)
    f = faces[0]
    if f.width < MIN_FACE:
        raise PortraitError(f"the face in {name} is only {f.width} px wide (need at least {MIN_FACE} px)",
                            "use a larger photo or one cropped closer to the face")
    if len(faces) > 1:
        notes.append(f"found {len(faces)} faces; using the largest")
    h, w = bgr.shape[:2]
    y1 = f.y1 + round((CHIN + PAD) * f.height)
    return FaceBox(max(f.x0, 0), max(f.y0, 0), min(f.x1, w), min(y1, h))


def _face_input(bgr: np.ndarray, box: FaceBox) -> np.ndarray:
    crop = bgr[box.y0 : box.y1, box.x0 : box.x1]
    shrink = box.width > 96 or box.height > 96  # averaging, not point sampling, when a side shrinks: no aliasing
    face = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR).astype(np.float32) / 255.0
    masked = face.copy()
    masked[48:] = 0.0  # Wav2Lip sees only the upper half of the target frame and draws the lower half
    return np.ascontiguousarray(np.concatenate([masked, face], axis=2).transpose(2, 0, 1))
