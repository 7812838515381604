"""Mouth shapes from the voice: a frame's mel window -> probabilities over a few shapes (the estimator).

Concern: which lip shape (closed m/b/p, lip-teeth f/v, rounded o/u/w, open a, mid e, spread i, rest) the
voice shows at a frame's time, speaker-independent and with no calibration. Its input is exactly what the
pipeline already hands the lite engine per frame: Wav2Lip's normalised 80x16 mel window covering
[t - 40 ms, t + 160 ms] (see `frame_clock.mel_start`), so it needs no look-ahead of its own.
The model is four small MLPs (an ensemble: their probabilities averaged) trained by `training/visemes/train.py`
on speech the project synthesizes itself (`training/visemes/make_data.py`); its weights are `visemes.npz` next
to this file. Pure numpy.

Threads: an estimator belongs to the one thread that calls `probabilities`, in frame order (its smoothing
state is per stream): the frame thread, or the renderer's mouth thread when the Lite engine runs there under
the renderer's engine lock; `load` may run anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar_cam.thread_priority import one_blas_thread

SHAPES = ("rest", "closed", "lip_teeth", "rounded", "open", "mid", "spread")
WEIGHTS = Path(__file__).with_name("visemes.npz")


def features(mels: np.ndarray) -> np.ndarray:
    """(B,1,80,16) or (B,80,16) normalised mel windows -> (B, 1281) model inputs, independent of the gain:
    the window relative to its loudest bin, plus that loudest level itself (scaled to about unit size)."""
    x = np.asarray(mels, np.float32).reshape(-1, 80 * 16)
    peak = x.max(axis=1, keepdims=True)
    return np.concatenate([x - peak, 0.25 * peak], axis=1)


class VisemeEstimator:
    """`probabilities(mels)` -> (B, len(SHAPES)). `smoothing` in [0, 1) blends each frame's probabilities
    with the previous frame's (0: none); `reset` forgets that state (a new stream). A weights file may hold
    several networks trained apart (an ensemble, `members` in the file): their probabilities are averaged."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], mean: np.ndarray, scale: np.ndarray,
                 smoothing: float = 0.0, others: list[tuple[list, np.ndarray, np.ndarray]] = ()):
        members = [(ls, m.astype(np.float64), s.astype(np.float64)) for ls, m, s in [(layers, mean, scale), *others]]
        # The standardisation folded into each first layer, and all first layers side by side: one matrix product.
        firsts = [(s[:, None] * w[0][0].astype(np.float64), w[0][1] - (m * s) @ w[0][0].astype(np.float64))
                  for w, m, s in members]
        self._first = (np.concatenate([w for w, _ in firsts], 1).astype(np.float32),
                       np.concatenate([b for _, b in firsts]).astype(np.float32))
        self._widths = np.cumsum([0] + [w.shape[1] for w, _ in firsts])
        self._rest = [[(w.astype(np.float32), b.astype(np.float32)) for w, b in ls[1:]] for ls, _, _ in members]
        self.smoothing = float(smoothing)
        self.reset()
        one_blas_thread()  # a frame's products are small: BLAS threads would spin more than they compute

    @classmethod
    def load(cls, path: Path | str = WEIGHTS, smoothing: float = 0.0) -> VisemeEstimator:
        with np.load(path) as z:
            shapes = tuple(str(s) for s in z["shapes"])
            if shapes != SHAPES:
                raise ValueError(f"{path} was trained for shapes {shapes}, this code draws {SHAPES}: retrain it")
            members = []
            for j in range(int(z["members"]) if "members" in z.files else 1):
                pre = f"m{j}_" if j else ""  # the first member's arrays keep the single network's names
                n = int(z[pre + "layers"])
                members.append(([(z[f"{pre}w{i}"], z[f"{pre}b{i}"]) for i in range(n)], z[pre + "mean"], z[pre + "scale"]))
            (layers, mean, scale), others = members[0], members[1:]
            return cls(layers, mean, scale, smoothing, others)

    def reset(self) -> None:
        self._last: np.ndarray | None = None

    def logits(self, mels: np.ndarray) -> list[np.ndarray]:
        """Each member's logits, (B, K) each."""
        w, b = self._first
        first = features(mels) @ w + b
        out = []
        for j, rest in enumerate(self._rest):
            h = first[:, self._widths[j] : self._widths[j + 1]]
            for layer_w, layer_b in rest:
                h = np.maximum(h, 0.0) @ layer_w + layer_b
            out.append(h)
        return out

    def probabilities(self, mels: np.ndarray) -> np.ndarray:
        """mels (B,1,80,16), consecutive frames in order -> (B, K) float32 probabilities over SHAPES."""
        p = 0.0
        for z in self.logits(mels):
            z = np.exp(z - z.max(axis=1, keepdims=True))
            p = p + z / z.sum(axis=1, keepdims=True)
        p = p / len(self._rest)
        if self.smoothing > 0.0:
            a = self.smoothing
            for i in range(len(p)):
                if self._last is not None:
                    p[i] = a * self._last + (1.0 - a) * p[i]
                self._last = p[i].copy()
        return p.astype(np.float32)
