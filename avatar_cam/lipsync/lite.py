"""The lite engine: the photo's own mouth, shaped by the voice. No download, no third-party weights.

Two halves, as in Wav2Lip: the audio decides a mouth shape per frame, the face decides how that shape looks.
- `MouthDriver` turns a frame's mel window (the same 200 ms the Wav2Lip model sees) into four numbers:
  an opening in [0, 1] (the speech band's loudness around the frame's time, scaled by a slow automatic gain,
  times how open the lips are for the shape the voice makes), a width in [-1, 1] (rounded o/u/w -1, spread
  i/e +1), a closure in [0, 1] (m/b/p: the lips press together, covering teeth the photo shows) and teeth in
  [0, 1] (f/v: the lower lip rises to the upper teeth). The shapes come from `visemes.VisemeEstimator`
  (the project's own small model); the numbers are blended by its probabilities and eased over frames, so
  shapes run into each other instead of snapping.
- `MouthWarp` draws those numbers on one image (the output canvas, at full resolution). Above the line
  where the lips meet the upper lip moves (up to open, down to close), below it the lower lip and the jaw;
  the mouth corners move in (rounding) or out (spreading); between the lips the inner mouth shows, dark,
  with upper teeth unless the photo already shows its own. Everything that depends only on the photo is
  computed once: per lip position level, the inverse of the vertical warp (levels are blended per frame),
  and the horizontal field. A frame costs a few blends of maps, one `cv2.remap` of the mouth-and-jaw region
  and a shaded gap; with the estimator, about one millisecond per 1280x720 frame (`bench visemes`).
"""

from __future__ import annotations

import cv2
import numpy as np

from avatar_cam.audio.mel import FMAX, FMIN, hz_to_mel, mel_to_hz
from avatar_cam.lipsync.visemes import SHAPES, VisemeEstimator
from avatar_cam.video.face_layout import FaceLayout, locate
from avatar_cam.video.portrait import Portrait

LEVELS = 17  # precomputed lip positions per lip, from pressed (-1) to wide open (+1)
GAP = 0.42  # widest lip gap, as a fraction of the mouth's half-width (a wide "ah")
UPPER_SHARE = 0.3  # of the gap, taken by the upper lip moving up (the rest is the jaw dropping)
JAW = 0.8  # the chin drops this much of the lower lip's travel
SPREAD, ROUND = 0.10, 0.4  # mouth corners move out at width +1, in at width -1 (of the half-width)

# Per shape (in SHAPES order): how open the lips are at full loudness, and how wide the mouth is.
_OPEN = {"rest": 0.3, "closed": 0.0, "lip_teeth": 0.3, "rounded": 0.55, "open": 1.0, "mid": 0.8, "spread": 0.6}
_WIDTH = {"rest": 0.0, "closed": 0.1, "lip_teeth": 0.2, "rounded": -1.0, "open": 0.1, "mid": 0.35, "spread": 1.0}
# P(closed) where the lips start to close and where they are fully shut: chosen on the validation voices
# (`training/visemes/evaluate.py --validation`), the most closure recall whose false closures stay within
# 2 points of the strictest candidate's on each validation set.
CLOSE_AT = (0.2, 0.5)
MAX_STEP = 0.5
EASE = {"opening": 0.55, "closing": 0.85, "width": 0.5, "teeth": 0.6}  # per-frame step toward the target (30 fps)


def _smooth(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mel_bands() -> tuple[np.ndarray, np.ndarray]:
    """Centre frequency and width (Hz) of Wav2Lip's 80 mel bands."""
    edges = mel_to_hz(np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), 82))
    return edges[1:-1], (edges[2:] - edges[:-2]) / 2.0


class MouthDriver:
    """Mel windows -> mouth shapes. Keeps a slow gain, the estimator's state and the eased shape: call it with
    every talking frame, in frame order, from one thread at a time (the renderer calls engines under its
    engine lock, on its mouth-drawing thread).

    Column i of a frame's window is centred 40 ms before the frame's time plus 12.5 ms per column (with the
    trained 160 ms lookahead); the loudness follows the sound about 20 ms ahead of it, as real mouths lead.
    """

    def __init__(self, centre_col: float = 4.8, spread_cols: float = 3.0, estimator: VisemeEstimator | None = None):
        hz, bw = _mel_bands()
        self._voice = ((hz > 100) & (hz < 4000)) * bw  # energy weights: undo the Slaney per-band normalisation
        cols = np.arange(16)
        k = np.exp(-0.5 * ((cols - centre_col) / spread_cols) ** 2)
        self._kernel = (k / k.sum()).astype(np.float64)
        self.estimator = estimator if estimator is not None else VisemeEstimator.load()
        self._open = np.array([_OPEN[s] for s in SHAPES])
        self._width = np.array([_WIDTH[s] for s in SHAPES])
        self._closed, self._teeth, self._rest = (SHAPES.index(s) for s in ("closed", "lip_teeth", "rest"))
        self.reset()

    def reset(self) -> None:
        self._ref_db = 10.0  # loudest recent speech, in this class's band-energy dB (speech at -21 dBFS peaks ~15)
        self._eased = np.zeros(4)  # opening, width, closure, teeth as last drawn
        self.estimator.reset()

    def loudness(self, mel: np.ndarray) -> float:
        """One (80,16) window -> opening from loudness in [0, 1]; updates the gain state."""
        power = 10.0 ** (((mel.astype(np.float64) + 4.0) * 12.5 - 80.0) / 10.0)  # back to squared magnitude
        voice = self._voice @ power  # (16,): speech-band energy per column
        level = 10.0 * np.log10(voice @ self._kernel + 1e-12)
        # The gain reference jumps up to loud speech and sinks ~2 dB per second back, never below a
        # floor, so background noise in a long pause does not become a wide-open mouth.
        self._ref_db = max(level, self._ref_db - 0.07, -8.0)
        # Half open at typical syllable peaks (~8 dB under the loudest), wide open only at the loudest.
        # Opening per column, then averaged: onsets ramp over ~100 ms instead of snapping open.
        cols = 10.0 * np.log10(voice + 1e-12)
        return float(np.clip((cols - (self._ref_db - 30.0)) / 30.0, 0.0, 1.0) ** 1.5 @ self._kernel)

    def target(self, mel: np.ndarray, p: np.ndarray) -> np.ndarray:
        """One window and its shape probabilities -> (opening, width, closure, teeth) before easing."""
        loud = self.loudness(mel)
        closure = float(_smooth((p[self._closed] - CLOSE_AT[0]) / (CLOSE_AT[1] - CLOSE_AT[0])))
        not_closed = 1.0 - p[self._closed]
        lips = float(p @ self._open) / max(not_closed, 1e-6)  # how open the lips of the other shapes are
        teeth = p[self._teeth] / max(not_closed, 1e-6)
        # Shapes only where there is speech: at rest (silence, a pause) the photo's own mouth, exactly.
        speech = float(_smooth((1.0 - p[self._rest] - 0.1) / 0.3))
        return np.array([loud * lips * (1.0 - closure), speech * float(p @ self._width), closure,
                         speech * teeth * (1.0 - closure)])

    def shapes(self, mels: np.ndarray) -> np.ndarray:
        """mels (B,1,80,16) or (B,80,16) normalised mel -> (B, 4) float32: opening, width, closure, teeth."""
        mels = np.asarray(mels, np.float32).reshape(-1, 80, 16)
        out = np.zeros((len(mels), 4), np.float32)
        e = self._eased
        for i in range(len(mels)):
            # One frame at a time: a batch gives exactly what frame-by-frame calls give (live == offline).
            p = self.estimator.probabilities(mels[i : i + 1])[0].astype(np.float64)
            t = self.target(mels[i], p)
            step = np.array([EASE["opening"] if t[0] > e[0] else EASE["closing"], EASE["width"], EASE["closing"],
                             EASE["teeth"]])
            opening = e[0]
            e += step * (t - e)
            # Lips travel at most MAX_STEP of their full opening per frame (a wide "ah" into "p" takes two frames).
            e[0] = float(np.clip(e[0], opening - MAX_STEP, opening + MAX_STEP))
            out[i] = e
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
        # The gap's shading only needs the rows and columns the gap can reach.
        gx0, gx1 = max(x0, int(L.mouth_x - mw) - 1), min(x1, int(np.ceil(L.mouth_x + mw)) + 2)
        cols = slice(gx0 - x0, gx1 - x0)
        self._colours = _mouth_colours(image, L, u[cols])
        # The photo's own opening (teeth between the lips): how far each lip must travel to meet the other.
        self.band_up, self.band_low = _teeth_band(image, L) if self._colours[2] is None else (0.0, 0.0)
        jaw = 1.0 - _smooth((np.abs(v) - 0.3) / 0.65)  # the chin moves as a whole; the cheeks stretch
        # Every field fades to 0 before the region's edges: sideways by |v| < 0.95, up at the nose, down
        # at `bottom`, so the warped region joins the untouched picture seamlessly.
        rows = Y[:, :1]
        levels = np.linspace(-1, 1, LEVELS)
        self._up_levels = np.stack([self._upper_rows(rows, lv) for lv in levels])
        # Stored less the lips' line, so a frame's map is upper + lower (each is the line where it does not apply).
        self._low_levels = np.stack([self._lower_rows(rows, lv, jaw, bottom) - self._line for lv in levels])
        self._up_steps = np.diff(self._up_levels, axis=0)
        self._low_steps = np.diff(self._low_levels, axis=0)
        # Horizontal: corners out (width > 0) or in, fading away from the mouth in every direction.
        along = np.clip(u, -1, 1) * (1 - _smooth((np.abs(u) - 1.0) / 0.8))
        up = _smooth((Y - L.nose_y) / (self._line - L.nose_y))
        down = 1 - _smooth((Y - self._line) / (L.chin_y - self._line))
        self._spread = (mw * along[None, :] * np.where(self._line > Y, up, down)).astype(np.float32)
        gy0 = max(y0, int(self._line.min() - UPPER_SHARE * self.gap) - 2)
        gy1 = min(y1, int(np.ceil(self._line.max() + (1 - UPPER_SHARE) * self.gap)) + 3)
        self._gap_box = (gx0, gy0, gx1, gy1)
        self._gap_y = np.arange(gy0, gy1, dtype=np.float32)[:, None]
        self._gap_u = u[cols][None, :].astype(np.float32)
        self._gap_line = self._line[cols][None, :].astype(np.float32)
        self._soft = max(1.0, 0.03 * mw)  # edge width: as soft as the photo is sharp at this scale

    def _travel(self, level: float, up: bool) -> np.ndarray:
        """Per column: how far a lip moves at `level` (-1 pressed shut .. 0 as in the photo .. 1 wide open)."""
        share = UPPER_SHARE if up else 1 - UPPER_SHARE
        band = self.band_up if up else self.band_low
        profile = self._p_up if up else self._p_low
        return (level * share * self.gap if level >= 0 else level * band) * profile

    def _upper_rows(self, rows: np.ndarray, level: float) -> np.ndarray:
        """Source row of each output pixel above the gap, for an upper lip at `level` (moving up > 0);
        the lips' line elsewhere."""
        L = self.layout
        line, ny = self._line, L.nose_y
        up = self._travel(level, True)
        y = rows.astype(np.float64)
        s = y
        for _ in range(6):  # fixed point: the fields change slowly, so this converges to ~0.01 px
            s = y + up * _smooth((np.minimum(s, line) - ny) / (line - ny))
        return np.where(y < line - np.maximum(up, 0), np.minimum(s, line), line).astype(np.float32)

    def _lower_rows(self, rows: np.ndarray, level: float, jaw: np.ndarray, bottom: float) -> np.ndarray:
        """Source row below the gap for a lower lip at `level` (moving down > 0; the chin follows when open)."""
        L = self.layout
        line, cy = self._line, L.chin_y
        low = self._travel(level, False)
        chin = max(level, 0.0) * (1 - UPPER_SHARE) * self.gap * JAW * jaw
        y = rows.astype(np.float64)

        def drop(s):
            t = _smooth((s - line) / (cy - line))
            return np.where(s < cy, low * (1 - t) + chin * t, chin * (1 - _smooth((s - cy) / (bottom - cy))))

        s = y
        for _ in range(6):
            s = y - drop(np.maximum(s, line))
        return np.where(y > line + np.maximum(low, 0), np.maximum(s, line), line).astype(np.float32)

    def _level_map(self, levels, steps, level: float) -> np.ndarray:
        pos = (float(np.clip(level, -1, 1)) + 1) / 2 * (LEVELS - 1)
        k = min(int(pos), LEVELS - 2)
        return cv2.scaleAdd(steps[k], pos - k, levels[k])

    def paint(self, img: np.ndarray, opening: float, width: float = 0.0, closure: float = 0.0, teeth: float = 0.0) -> None:
        """Draw the mouth on `img`, in place, inside `region`: `opening` in [0, 1], `width` in [-1, 1] (rounded
        .. spread), `closure` in [0, 1] (lips pressed together), `teeth` in [0, 1] (lower lip to the upper teeth)."""
        if not self._visible or (opening <= 1e-3 and abs(width) <= 1e-3 and closure <= 1e-3 and teeth <= 1e-3):
            return
        x0, y0, x1, y1 = self.region
        own_teeth = self._colours[2] is None
        closure *= float(_smooth(1.0 - opening / 0.25))  # the lips press only once they have (nearly) met
        # f/v: the lower lip rises to the upper teeth (over the photo's lower teeth, if it shows them).
        low_open = opening * (1.0 - teeth)
        up_open = low_open if own_teeth else opening
        map_y = self._level_map(self._up_levels, self._up_steps, up_open - closure)
        map_y += self._level_map(self._low_levels, self._low_steps, low_open - max(closure, teeth if own_teeth else 0.0))
        k = ROUND if width < 0 else SPREAD
        map_x = cv2.scaleAdd(self._spread, -k * float(width), self._X)
        patch = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if up_open > 1e-3:
            self._shade_gap(patch, up_open, low_open, width, teeth)
        img[y0:y1, x0:x1] = patch

    def _shade_gap(self, patch: np.ndarray, up_open: float, low_open: float, width: float, teeth: float) -> None:
        """Inner mouth between the moved lips: shadow under the upper lip, the tongue's glow low down,
        teeth if the photo has none of its own (more of them on f/v); anti-aliased edges."""
        x0, y0 = self.region[:2]
        gx0, gy0, gx1, gy1 = self._gap_box
        # The gap follows the corners: narrower when rounded, wider when spread.
        u = self._gap_u / (1 + (ROUND if width < 0 else SPREAD) * width)
        across = np.clip(1 - u * u, 0, None) ** (1.0 + 0.5 * min(width, 0.0))  # rounder when rounded
        top = self._gap_line - UPPER_SHARE * up_open * self.gap * across
        bot = self._gap_line + (1 - UPPER_SHARE) * low_open * self.gap * across ** 0.9
        yy = self._gap_y
        cover = np.clip(np.minimum(yy - top, bot - yy) / self._soft + 0.3, 0, 1) * np.clip(8 * across, 0, 1)
        dark, tongue, tooth, strength = self._colours
        depth = np.clip((yy - top) / np.maximum(bot - top, 1.0), 0, 1)
        colour = dark + (tongue - dark) * (depth * depth * min(1.0, up_open * 1.5))[..., None]
        if tooth is not None:
            tooth_h = np.minimum((0.4 + 0.6 * teeth) * (bot - top), (0.12 + 0.3 * teeth) * self.layout.mouth_half_width)
            t = np.clip(top + tooth_h - yy + 0.5, 0, 1) * strength
            colour = colour + (tooth - colour) * t[..., None]
        region = patch[gy0 - y0 : gy1 - y0, gx0 - x0 : gx1 - x0]
        region[:] = np.clip(region + (colour - region) * cover[..., None] + 0.5, 0, 255).astype(np.uint8)


def _teeth_band(image: np.ndarray, L: FaceLayout) -> tuple[float, float]:
    """How far above and below the lips' line the photo's teeth show (its lips' inner edges), in pixels:
    the rows at the mouth's middle that are less red than halfway from the teeth to the lips."""
    h, w = image.shape[:2]
    mw = L.mouth_half_width
    x0, x1 = max(0, int(L.mouth_x - 0.25 * mw)), min(w, int(L.mouth_x + 0.25 * mw) + 1)
    reach = int(np.ceil(0.5 * mw))
    ya, yb = max(0, int(L.mouth_y) - reach), min(h, int(L.mouth_y) + reach + 1)
    if x1 <= x0 or yb <= ya:
        return 0.0, 0.0
    a = np.median(cv2.cvtColor(image[ya:yb, x0:x1], cv2.COLOR_BGR2Lab)[..., 1].astype(np.float32), axis=1)
    centre = int(L.mouth_y) - ya
    teeth_a = a[max(0, centre - 1) : centre + 2].mean()
    lips_a = a.max()
    if lips_a - teeth_a < 6:
        return 0.0, 0.0
    redder = a > (teeth_a + lips_a) / 2
    above = np.nonzero(redder[:centre])[0]
    below = np.nonzero(redder[centre:])[0]
    up = (L.mouth_y - (ya + above[-1] + 1)) if len(above) else 0.0
    low = ((ya + centre + below[0]) - L.mouth_y) if len(below) else 0.0
    return float(np.clip(up, 0, 0.4 * mw)), float(np.clip(low, 0, 0.4 * mw))


def _mouth_colours(image: np.ndarray, L: FaceLayout, u: np.ndarray):
    """(dark, tongue, teeth or None, teeth strength) per column, taken from the photo's light.

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
    corner = np.clip(1 - u * u, 0, 1)[:, None]
    dark = (lip * 0.16 + 4.0) * (0.6 + 0.4 * corner)
    tongue = (lip * np.float32([0.42, 0.42, 0.55])) * (0.6 + 0.4 * corner)
    # Teeth where the lips meet are bright and less red than the skin (lips are redder).
    (line_l, line_a, _), (cheek_l, cheek_a, _) = cv2.cvtColor(np.uint8([[line, cheek]]), cv2.COLOR_BGR2Lab)[0].astype(float)
    if line_l > 0.8 * cheek_l and line_a < cheek_a - 2:
        return dark, tongue, None, None
    tooth = np.float32([0.84, 0.92, 0.97]) * min(230.0, 0.9 * float(cheek.mean()) + 40)  # ivory, as lit as the face
    return dark, tongue, tooth, 0.85 * corner[:, 0] ** 0.8


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
        """(B,1,80,16) mel windows, in frame order -> (B, 4) opening, width, closure, teeth."""
        return self.driver.shapes(mels)

    def canvas_painter(self, canvas: np.ndarray, layout: FaceLayout) -> MouthWarp:
        """The per-photo drawing state for an output canvas whose face is at `layout` (canvas pixels)."""
        return MouthWarp(canvas, layout)

    def lower_faces(self, mels: np.ndarray) -> np.ndarray:
        if self._crop_warp is None:
            raise RuntimeError("set_face must be called before lower_faces")
        out = []
        for shape in self.mouth_shapes(mels):
            face = self._crop.copy()
            self._crop_warp.paint(face, *(float(v) for v in shape))
            out.append(face.transpose(2, 0, 1).astype(np.float32) / 255.0)
        return np.stack(out)
