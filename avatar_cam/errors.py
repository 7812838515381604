"""Errors a person can act on.

Every expected failure (no model, bad checkpoint, no network, no face...) raises an `AvatarCamError`
whose message says what failed and why, and whose `hint` says what to do about it. The CLI prints both
and exits with status 2; it never shows a traceback for these. Each room raises its own subclass, so callers
tell failures apart by type, never by message text.
"""

from __future__ import annotations


class AvatarCamError(Exception):
    """Base class for failures the user can fix. `hint` is the command or action that fixes it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n  -> {self.hint}" if self.hint else text


class CheckpointError(AvatarCamError):
    """A checkpoint file is unreadable, unsafe or not a Wav2Lip generator."""


class ModelNotInstalledError(AvatarCamError):
    """The requested model has not been fetched or imported yet."""


class DownloadError(AvatarCamError):
    """A download failed (network, server, timeout, or the file did not validate)."""


class EngineError(AvatarCamError):
    """OpenVINO could not build, compile or run the network."""


class AudioError(AvatarCamError):
    """A microphone or audio file cannot be used."""


class PortraitError(AvatarCamError):
    """The photo cannot be used: unreadable, too small, or no usable face in it."""


class CameraError(AvatarCamError):
    """The virtual camera is missing, busy, or failed."""


class UnknownCameraBackendError(CameraError):
    """The configured virtual camera backend does not exist: a setting to fix, not a device to wait for."""


class VirtualMicError(AvatarCamError):
    """The virtual microphone cannot be created or fed."""


class NotRunningError(AvatarCamError):
    """Nothing listens on the control socket."""

    def __init__(self) -> None:
        super().__init__("Avatar Cam is not running", hint="start it with `avatar-cam`")
