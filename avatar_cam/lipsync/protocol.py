"""The lip-sync engine contract: what the renderer asks of an engine, and of one that draws on the canvas itself.

Engines implement `LipSync` (Wav2Lip: a 96x96 lower face per mel window) or `CanvasLipSync` (Lite: a mouth shape
per mel window, drawn on the full-resolution canvas by its `MouthPainter`). The renderer calls every method on
its frame thread; `set_face` may also run on the thread that switches photo or engine, before the engine is
handed to the renderer.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from avatar_cam.video.portrait import Portrait


class LipSync(Protocol):
    """A lip-sync engine: given the face once, draws the lower face for each mel window."""

    name: str  # what the tray and `status` show: "wav2lip", "lite"

    def set_face(self, portrait: Portrait) -> None: ...

    def lower_faces(self, mels: np.ndarray) -> np.ndarray:
        """mels (B,1,80,16) -> (B,3,R,96) BGR in [0,1]: the bottom R rows of the 96x96 face crop (R >= 49, see
        `Compositor.paste`); an engine may skip the rows above, which are never shown."""
        ...


class MouthPainter(Protocol):
    region: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the unmirrored canvas that `paint` may change

    def paint(self, img: np.ndarray, opening: float, width: float = 0.0, closure: float = 0.0, teeth: float = 0.0) -> None:
        """Draw one mouth shape (the numbers `CanvasLipSync.mouth_shapes` gives, each scaled by the talking
        weight: all 0 is the photo as it is) on `img`, in place, inside `region`."""
        ...


class CanvasLipSync(LipSync, Protocol):
    """An engine that draws on the full-resolution canvas itself instead of a 96x96 patch (the lite engine).

    The renderer asks it for one small mouth shape per talking frame, then has its painter draw it.
    """

    def mouth_shapes(self, mels: np.ndarray) -> np.ndarray:
        """mels (B,1,80,16), in frame order -> (B, 4): opening in [0, 1], width in [-1, 1] (rounded .. spread),
        closure in [0, 1] (lips pressed together: m/b/p), teeth in [0, 1] (lower lip to the upper teeth: f/v)."""
        ...

    def canvas_painter(self, canvas: np.ndarray, layout) -> MouthPainter: ...
