"""Choosing the lip-sync engine by name: "wav2lip" (OpenVINO, needs the downloaded weights) or "lite"
(no model at all). Without the Wav2Lip weights the camera still works: it falls back to the lite engine."""

from __future__ import annotations

import logging

from .errors import AvatarCamError, ModelNotInstalledError

log = logging.getLogger(__name__)

ENGINES = ("wav2lip", "lite")
FALLBACK_NOTE = "using the Lite engine: the Wav2Lip weights are not installed (avatar-cam models fetch)"


def make_lipsync(engine: str = "wav2lip", device: str = "CPU", precision: str = "f32", fallback: bool = True):
    """The lip-sync engine by name; its `name` says which one it is.

    Asked for Wav2Lip without installed weights: with `fallback`, the lite engine (and a warning saying how
    to get the weights); without it, an error saying so.
    """
    from .lite_engine import LiteLipSync

    if engine == "lite":
        return LiteLipSync()
    if engine != "wav2lip":
        raise AvatarCamError(f"unknown lip-sync engine {engine!r}", hint=f"choose one of: {', '.join(ENGINES)}")
    from . import model_store
    from .engine import Wav2LipEngine
    from .renderer import Wav2LipLipSync

    try:
        checkpoint = model_store.installed_checkpoint()
    except ModelNotInstalledError as exc:
        if fallback:
            log.warning(FALLBACK_NOTE)
            log.debug("no Wav2Lip weights: %s", exc)
            return LiteLipSync()
        raise ModelNotInstalledError(
            f"the Wav2Lip weights are not installed, so the {engine} engine cannot run ({exc.args[0]})",
            hint="run `avatar-cam models fetch` (asks you to accept the non-commercial licence), "
            "or `avatar-cam models import PATH` with a wav2lip_gan.pth you already have; "
            "or use `--engine lite`, which needs no download",
        ) from None
    return Wav2LipLipSync(Wav2LipEngine.from_checkpoint(checkpoint, device=device, precision=precision))
