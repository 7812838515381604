"""Avatar Cam: a lip-synced virtual webcam from one portrait photo (Wav2Lip on OpenVINO, no PyTorch).

The public Python API (see README.md, "Python API"):
    Wav2LipEngine                 the Wav2Lip generator on OpenVINO (avatar_cam.wav2lip.engine)
    melspectrogram, StreamingMel  Wav2Lip's audio features, offline and streaming (avatar_cam.audio.mel)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Wav2LipEngine", "melspectrogram", "StreamingMel", "__version__"]


def __getattr__(name: str):
    # Lazy: `avatar-cam --help` and the tray should not pay for importing OpenVINO.
    if name == "Wav2LipEngine":
        from avatar_cam.wav2lip.engine import Wav2LipEngine

        return Wav2LipEngine
    if name in ("melspectrogram", "StreamingMel"):
        from avatar_cam.audio import mel

        return getattr(mel, name)
    raise AttributeError(f"module 'avatar_cam' has no attribute {name!r}")
