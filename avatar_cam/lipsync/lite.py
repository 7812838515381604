"""The lite engine: the photo's own mouth, opened by the voice. No model, no download, no third-party weights.

Two halves, as in Wav2Lip: the audio decides a mouth shape per frame, the face decides how that shape looks.
- `MouthDriver` turns a frame's mel window (the same 200 ms the Wav2Lip model sees) into an opening in
  [0, 1] (from the speech band's loudness, smoothed over ~40 ms around the frame's time and scaled by a
  slow automatic gain, so a quiet microphone still opens the mouth) and a width in [-1, 1] (from how
  bright the spectrum is: "ee" spreads the lips, "oo" rounds them).
- `MouthWarp` draws a shape on one image (the output canvas, at full resolution). Below the line where the
  lips meet, the lower lip and the jaw move down; above it, the upper lip moves up a little; between them
  the inner mouth shows, dark, with a hint of upper teeth unless the photo already shows teeth. Everything
  that depends only on the photo is computed once: per opening level, the inverse of the vertical warp
  (levels are blended per frame), and the horizontal field. A frame costs a blend of two maps, one
  `cv2.remap` of the mouth-and-jaw region and a shaded gap: about 0.3 ms at 1280x720.
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar_cam.audio.mel import FMAX, FMIN, hz_to_mel, mel_to_hz
from avatar_cam.video.face_layout import FaceLayout, locate
from avatar_cam.video.portrait import Portrait

LEVELS = 17  # precomputed opening levels; frames blend the two nearest (0.06 of the opening apart)
GAP = 0.42  # widest lip gap, as a fraction of the mouth's half-width (a wide "ah")
UPPER_SHARE = 0.3  # of the gap, taken by the upper lip moving up (the rest is the jaw dropping)
JAW = 0.8  # the chin drops this much of the lower lip's travel
SPREAD = 0.09  # mouth corners move out (or in) by this much of the half-width at width +1 (-1)


def _smooth(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mel_bands() -> tuple[np.ndarray, np.ndarray]:
    """Centre frequency and width (Hz) of Wav2Lip's 80 mel bands."""
    edges = mel_to_hz(np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), 82))
    return edges[1:-1], (edges[2:] - edges[:-2]) / 2.0


class MouthDriver:
    """Mel windows -> mouth shapes. Keeps a slow gain state: call it with every talking frame, in frame order.

    Column i of a frame's window is centred 40 ms before the frame's time plus 12.5 ms per column (with the
    trained 160 ms lookahead); the mouth follows the sound about 20 ms ahead of it, as real mouths lead.
    """

    def __init__(self, centre_col: float = 4.8, spread_cols: float = 3.0):
        hz, bw = _mel_bands()
        self._voice = ((hz > 100) & (hz < 4000)) * bw  # energy weights: undo the Slaney per-band normalisation
        self._low = ((hz > 250) & (hz < 1100)) * bw
        self._high = ((hz > 1600) & (hz < 4000)) * bw
        cols = np.arange(16)
        k = np.exp(-0.5 * ((cols - centre_col) / spread_cols) ** 2)
        self._kernel = (k / k.sum()).astype(np.float64)
        self.reset()

    def reset(self) -> None:
        self._ref_db = 10.0  # loudest recent speech, in this class's band-energy dB (speech at -21 dBFS peaks ~15)

    def shapes(self, mels: np.ndarray) -> np.ndarray:
        """mels (B,1,80,16) or (B,80,16) normalised Wav2Lip mel -> (B, 2) float32: opening, width."""
        mels = np.asarray(mels, np.float64).reshape(-1, 80, 16)
        # Back from Wav2Lip's normalised dB to squared magnitude per band.
        power = 10.0 ** (((mels + 4.0) * 12.5 - 80.0) / 10.0)
        voice = np.einsum("bfc,f->bc", power, self._voice)  # (B, 16): speech-band energy per column
        smooth = power @ self._kernel  # (B, 80): the spectrum around the frame's time
        out = np.zeros((len(mels), 2), np.float32)
        for i in range(len(mels)):
            level = 10.0 * np.log10(voice[i] @ self._kernel + 1e-12)
            # The gain reference jumps up to loud speech and sinks ~2 dB per second back, never below a
            # floor, so background noise in a long pause does not become a wide-open mouth.
            self._ref_db = max(level, self._ref_db - 0.07, -8.0)
            # Half open at typical syllable peaks (~8 dB under the loudest), wide open only at the loudest.
            # Opening per column, then averaged: onsets ramp over ~100 ms instead of snapping open.
            cols = 10.0 * np.log10(voice[i] + 1e-12)
            opening = float(np.clip((cols - (self._ref_db - 30.0)) / 30.0, 0.0, 1.0) ** 1.5 @ self._kernel)
            spec = smooth[i]
            tilt = 10.0 * np.log10((spec @ self._high + 1e-12) / (spec @ self._low + 1e-12))
            width = np.clip((tilt - 2.0) / 8.0, -1.0, 1.0)  # ~-6 dB: rounded vowel; ~+10 dB: spread or hiss
            out[i] = opening, width
        return out


class MouthWarp:
    """Draws mouth shapes on one image whose face is at `layout`. Everything per photo is built here.

    `region` (x0, y0, x1, y1) is the only part of the image `paint` may change.
    """

    def __init__(self, image: np.ndarray, layout: FaceLayout):
        H, W = image.shape[:2]
        L = layout
        self.layout = L
        bx0, by0, bx1, by1 = L.box
        mw = L.mouth_half_width
        self.gap = GAP * mw
        bottom = by1 + 0.12 * L.height  # the jaw's drop fades out over the neck just below the face box
        x0, x1 = max(0, int(np.floor(bx0))), min(W, int(np.ceil(bx1)))
        y0, y1 = max(0, int(np.floor(L.nose_y))), min(H, int(np.ceil(bottom)))
        self.region = (x0, y0, x1, y1)
        self._visible = x1 > x0 and y1 > y0 and mw >= 2
        if not self._visible:
            return
        X, Y = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        self._X = X
        u = (X[0] - L.mouth_x) / mw  # across the mouth: -1 .. 1 between the corners
        v = (X[0] - L.mouth_x) / (0.5 * L.width)  # across the face
        self._line = L.mouth_y - L.mouth_curve * np.clip(u, -1, 1) ** 2  # where the lips meet, per column
        self._p_up = np.clip(1 - u * u, 0, None) ** 1.0  # upper lip lift per column (0 at the corners)
        self._p_low = np.clip(1 - u * u, 0, None) ** 0.9  # lower lip drop per column
        jaw = 1.0 - _smooth((np.abs(v) - 0.3) / 0.65)  # the chin moves as a whole; the cheeks stretch
        # Every field fades to 0 before the region's edges: sideways by |v| < 0.95, up at the nose, down
        # at `bottom`, so the warped region joins the untouched picture seamlessly.
        self._levels = np.stack([self._inverse_rows(Y[:, :1], o, jaw, bottom) for o in np.linspace(0, 1, LEVELS)])
        self._steps = np.diff(self._levels, axis=0)
        # Horizontal: corners out (width > 0) or in, fading away from the mouth in every direction.
        along = np.clip(u, -1, 1) * (1 - _smooth((np.abs(u) - 1.0) / 0.8))
        up = _smooth((Y - L.nose_y) / (self._line - L.nose_y))
        down = 1 - _smooth((Y - self._line) / (L.chin_y - self._line))
        self._spread = (SPREAD * mw * along[None, :] * np.where(self._line > Y, up, down)).astype(np.float32)
        # The gap's shading only needs the rows and columns the gap can reach.
        gx0, gx1 = max(x0, int(L.mouth_x - mw) - 1), min(x1, int(np.ceil(L.mouth_x + mw)) + 2)
        gy0 = max(y0, int(self._line.min() - UPPER_SHARE * self.gap) - 2)
        gy1 = min(y1, int(np.ceil(self._line.max() + (1 - UPPER_SHARE) * self.gap)) + 3)
        self._gap_box = (gx0, gy0, gx1, gy1)
        cols = slice(gx0 - x0, gx1 - x0)
        self._gap_y = np.arange(gy0, gy1, dtype=np.float32)[:, None]
        self._gap_line = self._line[cols][None, :].astype(np.float32)
        self._gap_up = self._p_up[cols][None, :].astype(np.float32)
        self._gap_low = self._p_low[cols][None, :].astype(np.float32)
        self._colours = _mouth_colours(image, L, u[cols][None, :])
        self._soft = max(1.0, 0.03 * mw)  # edge width: as soft as the photo is sharp at this scale

    def _inverse_rows(self, rows: np.ndarray, opening: float, jaw: np.ndarray, bottom: float) -> np.ndarray:
        """For each output pixel, the source row at this opening (each column is warped on its own)."""
        L = self.layout
        line, ny, cy = self._line, L.nose_y, L.chin_y
        up = opening * UPPER_SHARE * self.gap * self._p_up  # per column
        low = opening * (1 - UPPER_SHARE) * self.gap * self._p_low
        chin = opening * (1 - UPPER_SHARE) * self.gap * JAW * jaw
        y = rows.astype(np.float64)

        def lift(s):  # how far a source row above the lips moves up
            return up * _smooth((s - ny) / (line - ny))

        def drop(s):  # ... and one below them, down
            t = _smooth((s - line) / (cy - line))
            return np.where(s < cy, low * (1 - t) + chin * t, chin * (1 - _smooth((s - cy) / (bottom - cy))))

        s_up, s_low = y, y
        for _ in range(6):  # fixed point: the fields change slowly, so this converges to ~0.01 px
            s_up = y + lift(np.minimum(s_up, line))
            s_low = y - drop(np.maximum(s_low, line))
        # Between the moved lips (the gap) the map points at the lips' line; `_shade_gap` paints over it.
        src = np.where(y < line - up, np.minimum(s_up, line), np.where(y > line + low, np.maximum(s_low, line), line))
        return src.astype(np.float32)

    def paint(self, img: np.ndarray, opening: float, width: float = 0.0) -> None:
        """Draw the mouth at `opening` in [0, 1] and `width` in [-1, 1] on `img`, in place, inside `region`."""
        if not self._visible or opening <= 1e-3:
            return
        x0, y0, x1, y1 = self.region
        pos = float(np.clip(opening, 0, 1)) * (LEVELS - 1)
        k = min(int(pos), LEVELS - 2)
        map_y = cv2.scaleAdd(self._steps[k], pos - k, self._levels[k])
        map_x = cv2.scaleAdd(self._spread, -float(width) * min(1.0, 3.0 * opening), self._X)
        patch = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self._shade_gap(patch, opening)
        img[y0:y1, x0:x1] = patch

    def _shade_gap(self, patch: np.ndarray, opening: float) -> None:
        """Inner mouth between the moved lips: shadow under the upper lip, the tongue's glow low down,
        teeth if the photo has none of its own; anti-aliased edges."""
        x0, y0 = self.region[:2]
        gx0, gy0, gx1, gy1 = self._gap_box
        g = opening * self.gap
        top = self._gap_line - UPPER_SHARE * g * self._gap_up
        bot = self._gap_line + (1 - UPPER_SHARE) * g * self._gap_low
        yy = self._gap_y
        cover = np.clip(np.minimum(yy - top, bot - yy) / self._soft + 0.3, 0, 1)
        dark, tongue, teeth, strength = self._colours
        depth = np.clip((yy - top) / np.maximum(bot - top, 1.0), 0, 1)
        colour = dark + (tongue - dark) * (depth * depth * min(1.0, opening * 1.5))[..., None]
        if teeth is not None:
            tooth_h = np.minimum(0.4 * (bot - top), 0.12 * self.layout.mouth_half_width)
            t = np.clip(top + tooth_h - yy + 0.5, 0, 1) * strength
            colour = colour + (teeth - colour) * t[..., None]
        region = patch[gy0 - y0 : gy1 - y0, gx0 - x0 : gx1 - x0]
        region[:] = np.clip(region + (colour - region) * cover[..., None] + 0.5, 0, 255).astype(np.uint8)


def _mouth_colours(image: np.ndarray, L: FaceLayout, u: np.ndarray):
    """(dark, tongue, teeth or None, teeth strength) for the gap's columns, taken from the photo's light.

    The inside is the lips' colour, much darker, and darker toward the corners; teeth are the cheeks'
    brightness, greyed, fading toward the corners. A photo that already shows teeth where the lips meet
    keeps its own (they move with the lips) and gets none drawn.
    """
    h, w = image.shape[:2]
    bx0, by0, bx1, by1 = L.box
    mw = L.mouth_half_width

    def median(y0, y1, x0, x1, default):
        part = image[max(0, int(y0)) : min(h, int(y1) + 1), max(0, int(x0)) : min(w, int(x1) + 1)]
        return np.median(part.reshape(-1, 3), axis=0).astype(np.float32) if part.size else np.float32(default)

    cheek = median(by0 + 0.45 * L.height, by0 + 0.6 * L.height, bx0 + 0.2 * L.width, bx1 - 0.2 * L.width, [120, 140, 180])
    line = median(L.mouth_y - 0.1 * mw, L.mouth_y + 0.1 * mw, L.mouth_x - 0.4 * mw, L.mouth_x + 0.4 * mw, cheek)
    lips = median(L.mouth_y - 0.35 * mw, L.mouth_y + 0.35 * mw, L.mouth_x - 0.5 * mw, L.mouth_x + 0.5 * mw, cheek)
    lip = np.minimum(lips, cheek * np.float32([0.85, 0.85, 1.0]))  # keep a red cast even when the middle is teeth
    corner = np.clip(1 - u * u, 0, 1)[..., None]
    dark = (lip * 0.16 + 4.0) * (0.6 + 0.4 * corner)
    tongue = (lip * np.float32([0.42, 0.42, 0.55])) * (0.6 + 0.4 * corner)
    # Teeth where the lips meet are bright and less red than the skin (lips are redder).
    (line_l, line_a, _), (cheek_l, cheek_a, _) = cv2.cvtColor(np.uint8([[line, cheek]]), cv2.COLOR_BGR2Lab)[0].astype(float)
    if line_l > 0.8 * cheek_l and line_a < cheek_a - 2:
        return dark, tongue, None, None
    tooth = np.float32([0.84, 0.92, 0.97]) * min(230.0, 0.9 * float(cheek.mean()) + 40)  # ivory, as lit as the face
    return dark, tongue, tooth, 0.85 * corner[..., 0] ** 0.8


class LiteLipSync:
    """The lite engine. `name` is "lite"; it draws on the output canvas (see `canvas_painter`), and also
    implements the 96x96 `lower_faces` of the LipSync protocol for callers that want a Wav2Lip-style patch."""

    name = "lite"

    def __init__(self):
        self.driver = MouthDriver()
        self._crop_warp: MouthWarp | None = None
        self._crop: np.ndarray | None = None

    def set_face(self, portrait: Portrait) -> None:
        crop = np.ascontiguousarray(np.clip(portrait.face_input[3:6].transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8))
        b = portrait.box
        layout = locate(portrait).mapped(96 / b.width, 96 / b.height, -b.x0 * 96 / b.width, -b.y0 * 96 / b.height)
        self._crop, self._crop_warp = crop, MouthWarp(crop, layout)

    def mouth_shapes(self, mels: np.ndarray) -> np.ndarray:
        """(B,1,80,16) mel windows, in frame order -> (B, 2) opening, width."""
        return self.driver.shapes(mels)

    def canvas_painter(self, canvas: np.ndarray, layout: FaceLayout) -> MouthWarp:
        """The per-photo drawing state for an output canvas whose face is at `layout` (canvas pixels)."""
        return MouthWarp(canvas, layout)

    def lower_faces(self, mels: np.ndarray) -> np.ndarray:
        if self._crop_warp is None:
            raise RuntimeError("set_face must be called before lower_faces")
        out = []
        for opening, width in self.mouth_shapes(mels):
            face = self._crop.copy()
            self._crop_warp.paint(face, float(opening), float(width))
            out.append(face.transpose(2, 0, 1).astype(np.float32) / 255.0)
        return np.stack(out)
