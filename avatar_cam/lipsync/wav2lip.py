"""The Wav2Lip engine as a lip-sync engine: the generator on OpenVINO, the portrait's face features computed once.

The live camera runs the generator's mouth-rows form (`MOUTH_FIRST_ROW`): only the rows the compositor blends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar_cam.audio.mel import MEL_WINDOW, SILENT_MEL
from avatar_cam.video.portrait import Portrait
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW
from avatar_cam.wav2lip.engine import Wav2LipEngine


class Wav2LipLipSync:
    """Wav2Lip on OpenVINO, with the portrait's face features computed once per photo."""

    name = "wav2lip"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "CPU", precision: str = "f32",
                        cache_dir: str | Path | None = None, threads: int | None = None,
                        streams: int = 1) -> Wav2LipLipSync:
        """The published checkpoint at `path`, compiled in the live camera's mouth-rows form, with `threads`
        OpenVINO CPU threads per inference (None: OpenVINO's default), or `streams` inferences at once (0: as many
        as suit the machine; an offline render), see `Wav2LipEngine.from_checkpoint`."""
        return cls(Wav2LipEngine.from_checkpoint(path, device=device, precision=precision, cache_dir=cache_dir,
                                                 first_row=MOUTH_FIRST_ROW, threads=threads, streams=streams))

    def __init__(self, engine: Wav2LipEngine):
        self.engine = engine
        self.streams = engine.report.streams  # batches `lower_faces` can run at once, from as many threads
        self._features: list[np.ndarray] | None = None
        self._warm = False

    def set_face(self, portrait: Portrait) -> None:
        self._features = self.engine.encode_face(portrait.face_input[None])
        if not self._warm:  # OpenVINO's first inference is slow (0.1-0.5 s): take it now, not on the first word
            self.engine.infer_encoded(np.full((1, 1, 80, MEL_WINDOW), SILENT_MEL, np.float32), self._features)
            self._warm = True

    def lower_faces(self, mels: np.ndarray) -> np.ndarray:
        if self._features is None:
            raise RuntimeError("set_face must be called before lower_faces")
        return self.engine.infer_encoded(mels, self._features)
