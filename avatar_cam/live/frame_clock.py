"""Which audio each video frame shows, and when that audio is complete. All times are on the audio clock.

Frame k shows the voice at audio time t_k = k / fps. Wav2Lip draws the mouth for time t from the 200 ms mel
window [t + L - 200 ms, t + L], where L is the lookahead (the model was trained with L = 160 ms). So frame k
can be drawn once the audio up to t_k + L (plus half an STFT window) has arrived: L is the latency floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from avatar_cam.audio.mel import HOP, MEL_FPS, MEL_WINDOW, N_FFT
from avatar_cam.audio.ring import SAMPLE_RATE


@dataclass(frozen=True)
class FrameClock:
    fps: float = 30.0
    lookahead_s: float = 0.16

    def __post_init__(self) -> None:
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps must be between 1 and 120, not {self.fps}")
        if not 0.0 <= self.lookahead_s <= 0.5:
            raise ValueError(f"lookahead must be between 0 and 500 ms, not {self.lookahead_s * 1000:.0f} ms")

    def audio_time(self, k: int) -> float:
        return k / self.fps

    def mel_start(self, k: int) -> int:
        """First mel column of frame k's window (may be negative near the start: those columns are silence)."""
        # A tiny epsilon keeps k/fps*80 from landing just under an integer through rounding (e.g. 12.8 + 67.2).
        return math.floor(MEL_FPS * (k / self.fps + self.lookahead_s) + 1e-9) - MEL_WINDOW

    def samples_needed(self, k: int) -> int:
        """Samples that must have arrived before frame k can be drawn: its last mel column's right edge."""
        last_col = self.mel_start(k) + MEL_WINDOW - 1
        # Column j spans samples [200j - 400, 200j + 400); column 0's reflect padding needs 401 samples.
        return max(N_FFT // 2 + 1, last_col * HOP + N_FFT // 2)

    def newest_ready(self, samples: int) -> int:
        """The last frame that `samples` samples of audio are enough to draw (-1 for none yet)."""
        k = math.floor((samples / SAMPLE_RATE - self.lookahead_s) * self.fps)
        while self.samples_needed(k + 1) <= samples:
            k += 1
        while k >= 0 and self.samples_needed(k) > samples:
            k -= 1
        return max(k, -1)

    def audio_span(self, k: int) -> tuple[int, int]:
        """Sample range [a, b) that frame k's mel window covers; the voice gate listens to the same audio."""
        start = self.mel_start(k)
        return start * HOP, (start + MEL_WINDOW) * HOP

    def frame_count(self, duration_s: float) -> int:
        """Frames for a clip of this length: every k with k/fps < duration."""
        return max(0, math.ceil(duration_s * self.fps - 1e-9))

    @staticmethod
    def sample_time(sample: int) -> float:
        return sample / SAMPLE_RATE
