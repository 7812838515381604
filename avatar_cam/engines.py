"""Choosing the lip-sync engine by name."""

from __future__ import annotations

from .errors import ModelNotInstalledError


def make_lipsync(engine: str, device: str = "CPU", precision: str = "f32"):
    """The lip-sync engine by name. Without installed weights, say so and how to get them."""
    from . import model_store
    from .engine import Wav2LipEngine
    from .renderer import Wav2LipLipSync

    try:
        checkpoint = model_store.installed_checkpoint()
    except ModelNotInstalledError as exc:
        raise ModelNotInstalledError(
            f"the Wav2Lip weights are not installed, so the {engine} engine cannot run ({exc})",
            hint="run `avatar-cam models fetch` (asks you to accept the non-commercial licence), "
            "or `avatar-cam models import PATH` with a wav2lip_gan.pth you already have",
        ) from None
    return Wav2LipLipSync(Wav2LipEngine.from_checkpoint(checkpoint, device=device, precision=precision))
