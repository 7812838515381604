"""The lip-sync engines, registered once: the CLI's choices, the tray's Engine menu and the settings iterate it.

"wav2lip" (the published generator on OpenVINO; needs the downloaded weights) and "lite" (no model at all). Asked
for Wav2Lip without the weights, the camera still works: `make_lipsync` falls back to Lite and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from avatar_cam.errors import AvatarCamError, ModelNotInstalledError

log = logging.getLogger(__name__)

FALLBACK_NOTE = "using the Lite engine: the Wav2Lip weights are not installed (avatar-cam models fetch)"


@dataclass(frozen=True)
class EngineSpec:
    name: str  # what settings, `--engine` and the status use
    label: str  # what the tray's menu shows
    make: Callable[[str, str, int | None, int], object]  # (OpenVINO device, precision, CPU threads, streams) -> a LipSync
    needs_weights: bool


def _make_wav2lip(device: str, precision: str, threads: int | None, streams: int = 1):
    from avatar_cam.lipsync.wav2lip import Wav2LipLipSync
    from avatar_cam.weights.store import installed_checkpoint

    return Wav2LipLipSync.from_checkpoint(installed_checkpoint(), device=device, precision=precision, threads=threads,
                                          streams=streams)


def _make_lite(device: str, precision: str, threads: int | None, streams: int = 1):
    from avatar_cam.lipsync.lite import LiteLipSync

    return LiteLipSync()


REGISTRY: dict[str, EngineSpec] = {
    spec.name: spec for spec in (
        EngineSpec("wav2lip", "Wav2Lip", _make_wav2lip, needs_weights=True),
        EngineSpec("lite", "Lite", _make_lite, needs_weights=False),
    )
}
ENGINES = tuple(REGISTRY)  # names, best first
FALLBACK = "lite"


def check_engine_name(engine: str) -> EngineSpec:
    if engine not in REGISTRY:
        raise AvatarCamError(f"unknown lip-sync engine {engine!r}", hint=f"choose one of: {', '.join(ENGINES)}")
    return REGISTRY[engine]


def make_lipsync(engine: str = "wav2lip", device: str = "CPU", precision: str = "f32", fallback: bool = True,
                 threads: int | None = None, streams: int = 1):
    """The lip-sync engine by name; its `name` says which one it is. `threads` and `streams`: see
    `Wav2LipEngine.from_checkpoint` (an offline render asks for streams=0, every core busy with batches).

    Asked for an engine whose weights are not installed: with `fallback`, the Lite engine (and a warning saying
    how to get the weights); without it, an error saying so.
    """
    spec = check_engine_name(engine)
    try:
        return spec.make(device, precision, threads, streams)
    except ModelNotInstalledError as exc:
        if fallback:
            log.warning(FALLBACK_NOTE)
            log.debug("no %s weights: %s", spec.label, exc)
            return REGISTRY[FALLBACK].make(device, precision, threads, streams)
        raise ModelNotInstalledError(
            f"the {spec.label} weights are not installed, so the {engine} engine cannot run ({exc.args[0]})",
            hint="run `avatar-cam models fetch` (asks you to accept the non-commercial licence), "
            "or `avatar-cam models import PATH` with a wav2lip_gan.pth you already have; "
            "or use `--engine lite`, which needs no download",
        ) from None
