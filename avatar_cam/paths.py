"""Where Avatar Cam keeps things on the user's machine (platformdirs: XDG on Linux, the usual places elsewhere)."""

from __future__ import annotations

import contextlib
import os
from importlib import resources
from pathlib import Path

import platformdirs

APP = "avatar-cam"


def data_dir() -> Path:
    """Downloaded and imported model weights."""
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def cache_dir() -> Path:
    """Converted OpenVINO IR and the compiled-model cache: safe to delete, rebuilt on the next start."""
    return Path(platformdirs.user_cache_dir(APP, appauthor=False))


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def log_dir() -> Path:
    return Path(platformdirs.user_log_dir(APP, appauthor=False))


def models_dir() -> Path:
    return data_dir() / "models"


def _bundled(wheel_name: str, repo_name: str) -> Path:
    """A folder shipped with the package: inside the wheel as `_name`, or at the repo top in a source checkout."""
    packaged = Path(str(resources.files("avatar_cam"))) / wheel_name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / repo_name


def manifest_dir() -> Path:
    """The model manifest and licence texts (`models/` in the repository)."""
    return _bundled("_models", "models")


def tray_assets_dir() -> Path:
    return _bundled("_tray_assets", "tray_assets")


@contextlib.contextmanager
def environ(changes: dict[str, str]):
    """Set environment variables for the block, then put back what was there. Process-wide: callers that may
    race (threads opening streams) hold a lock around it."""
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
