"""Every choice the user makes, kept in `settings.toml` in the user's config dir and restored at the next start.

A damaged file never stops the camera: it is moved aside (so nothing the user wrote is lost), defaults are
used, and the message says where the old file went. A value of the wrong type falls back to its default
alone. The file is readable by its owner only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from avatar_cam import paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

PERFORMANCE_MODES = ("smooth", "balanced", "light")  # what each costs and gives: live/performance.py
CHOICES = {"performance": PERFORMANCE_MODES, "fit": ("crop", "pad")}  # settings with a fixed set of values


@dataclass
class Settings:
    photo: str | None = None  # the portrait in use
    face_box: list[int] | None = None  # manual [x0, y0, x1, y1] when detection fails
    mic: str | None = None  # input device name; None: the system default
    camera_backend: str | None = None  # pyvirtualcam backend; None: the platform's
    camera_device: str | None = None
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    fit: str = "crop"
    mirror: bool = False
    engine: str = "wav2lip"  # "wav2lip" or "lite"
    device: str = "CPU"  # OpenVINO device
    precision: str = "f32"
    lookahead_ms: float = 160.0
    performance: str = "balanced"  # "smooth" | "balanced" | "light": how much of the machine lip-sync may take
    camera_on: bool = True  # whether the camera runs when the daemon starts
    start_at_login: bool = False
    preview: bool = False  # a window showing what the camera sends, while it runs
    virtual_mic: bool = False  # play the voice, delayed to match the lips, into "Avatar Cam Microphone"
    virtual_mic_offset_ms: float = 0.0
    idle_blinks: bool = True
    idle_head_motion: bool = True
    idle_breathing: bool = True
    notices: list[str] = field(default_factory=list, repr=False, compare=False)  # not saved: what load() had to say

    @staticmethod
    def path() -> Path:
        return paths.config_dir() / "settings.toml"

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        path = path or cls.path()
        settings = cls()
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return settings
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            kept = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(path, kept)
                where = f"it was kept as {kept}"
            except OSError:
                where = "it could not be moved aside"
            settings.notices.append(f"the settings file {path} was damaged ({exc}); using defaults, {where}")
            log.warning(settings.notices[-1])
            return settings
        for f in dataclasses.fields(cls):
            if f.name == "notices" or f.name not in raw:
                continue
            value = raw[f.name]
            default = getattr(settings, f.name)
            if _fits(value, default, f.type) and value in CHOICES.get(f.name, (value,)):
                setattr(settings, f.name, float(value) if isinstance(default, float) else value)
            else:
                settings.notices.append(f"setting {f.name} = {value!r} is not valid; using {default!r}")
                log.warning(settings.notices[-1])
        return settings

    def save(self, path: Path | None = None) -> None:
        """Write atomically (temp file + rename), readable only by the user."""
        path = path or self.path()
        data = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "notices" and getattr(self, f.name) is not None
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".settings-", suffix=".toml", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"# Avatar Cam settings: written by the app; edit while it is not running.\n")
                tomli_w.dump(data, f)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _fits(value: object, default: object, annotation: str) -> bool:
    if value is None:
        return "None" in str(annotation)
    if "list[int]" in str(annotation):
        return isinstance(value, list) and len(value) == 4 and all(isinstance(v, int) for v in value)
    if isinstance(default, bool) or "bool" in str(annotation):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)
