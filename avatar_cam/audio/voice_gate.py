"""Is anyone speaking in the audio a frame covers? In silence the camera shows the idle face and skips inference.

Wav2Lip does not reliably close the mouth in silence, so the gate decides instead. It looks at the same
200 ms of audio as the frame's mel window (which reaches 160 ms ahead), so a word's onset opens the mouth a
moment before the sound, as a real mouth does. Level is compared against a tracked noise floor, with
hysteresis and a short hold so the mouth does not flutter between syllables; the output is a blend weight
that ramps in over `attack_frames` and out over `release_frames`, so talking fades in and out without a jump.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class VoiceGate:
    """Per-frame voice activity. Owned by the frame thread; call `update` once per frame, in frame order."""

    fps: float = 30.0
    threshold_db: float = -50.0  # never speech below this level (dBFS), however quiet the room
    above_floor_db: float = 12.0  # speech must stand this far above the tracked noise floor
    hold_s: float = 0.15
    attack_frames: int = 2
    release_frames: int = 5
    _floor_db: float = field(default=-90.0, init=False)
    _hold: int = field(default=0, init=False)
    _alpha: float = field(default=0.0, init=False)

    def level_db(self, audio: np.ndarray) -> float:
        if audio.size == 0:
            return -120.0
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        return 20.0 * np.log10(max(rms, 1e-6))

    def update(self, audio: np.ndarray) -> float:
        """audio: the frame's window at 16 kHz. Returns the talking weight in [0, 1] (0 = idle face)."""
        level = self.level_db(audio)
        # The floor falls fast to quiet passages and rises slowly, so speech itself does not raise it much.
        rate = 0.5 if level < self._floor_db else 0.002
        self._floor_db += rate * (level - self._floor_db)
        speaking = level > max(self.threshold_db, self._floor_db + self.above_floor_db)
        if speaking:
            self._hold = max(1, round(self.hold_s * self.fps))
        elif self._hold > 0:
            self._hold -= 1
        target = 1.0 if self._hold > 0 else 0.0
        step = 1.0 / (self.attack_frames if target > self._alpha else self.release_frames)
        self._alpha = min(target, self._alpha + step) if target > self._alpha else max(target, self._alpha - step)
        return self._alpha

    def reset(self) -> None:
        self._floor_db, self._hold, self._alpha = -90.0, 0, 0.0
