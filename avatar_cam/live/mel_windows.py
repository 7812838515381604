"""Mel windows: the 16 mel columns (200 ms) a frame shows, from a whole clip or from the live stream.

`MelColumns` is owned by the live pipeline's frame thread.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from avatar_cam.audio.mel import MEL_WINDOW, SILENT_MEL


class MelColumns:
    """The most recent mel columns, addressed by absolute column index (the live pipeline's view of the stream)."""

    def __init__(self, keep: int = 400):
        self._cols: deque[np.ndarray] = deque(maxlen=keep)
        self.end = 0  # absolute index one past the newest column

    def extend(self, cols: np.ndarray) -> None:
        for j in range(cols.shape[1]):
            self._cols.append(cols[:, j])
        self.end += cols.shape[1]

    def window(self, start: int) -> np.ndarray:
        out = np.full((80, MEL_WINDOW), SILENT_MEL, np.float32)
        first = self.end - len(self._cols)
        for i in range(MEL_WINDOW):
            j = start + i
            if first <= j < self.end:
                out[:, i] = self._cols[j - first]
        return out


def mel_window(mel: np.ndarray, start: int) -> np.ndarray:
    """Columns [start, start+16) of a whole mel spectrogram, silence outside it."""
    out = np.full((80, MEL_WINDOW), SILENT_MEL, np.float32)
    lo, hi = max(start, 0), min(start + MEL_WINDOW, mel.shape[1])
    if hi > lo:
        out[:, lo - start : hi - start] = mel[:, lo:hi]
    return out
