"""Avatar Cam: a lip-synced virtual webcam from one portrait photo (Wav2Lip on OpenVINO, no PyTorch)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Wav2LipEngine", "melspectrogram", "StreamingMel", "__version__"]


def __getattr__(name: str):
    # Lazy: `avatar-cam --help` and the tray should not pay for importing OpenVINO.
    if name == "Wav2LipEngine":
        from .engine import Wav2LipEngine

        return Wav2LipEngine
    if name in ("melspectrogram", "StreamingMel"):
        from . import mel

        return getattr(mel, name)
    raise AttributeError(f"module 'avatar_cam' has no attribute {name!r}")
