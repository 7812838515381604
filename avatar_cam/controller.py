"""The controller: the one object that changes what the daemon does.

The tray menu, the control socket (`avatar-cam ctl`) and the CLI call only these methods, from their own
threads; a lock serialises them. The controller owns the pieces of the live path (camera sink, microphone
source, audio ring, pipeline and its frame thread) and changes the running pipeline only through
`LivePipeline.call_between_frames`, so switching photo, engine or microphone never closes the camera.

Errors in what the user asks for (a photo with no face, a missing microphone) raise `AvatarCamError` and
leave the current state as it was. Faults while running are reported in `status()` and to listeners; the
daemon keeps running.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import paths
from .errors import AvatarCamError
from .settings import Settings

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class Status:
    state: str  # "stopped" | "live" | "silent" | "paused" | "error"
    photo: str | None
    mic: str | None
    engine: str | None
    device: str | None
    camera: str | None
    fps: float
    latency_ms_p95: float | None
    error: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One line for the tray's status item."""
        if self.state == "error":
            return f"Error: {self.error}"
        if self.state == "stopped":
            return "Camera off"
        lat = f", {self.latency_ms_p95:.0f} ms" if self.latency_ms_p95 is not None else ""
        return f"{self.state.capitalize()}: {self.fps:.0f} fps{lat}"


def photos_dir() -> Path:
    return paths.data_dir() / "photos"


def photo_library() -> list[Path]:
    """Photos in the library folder (the tray lists them; files dropped there appear)."""
    folder = photos_dir()
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()), key=lambda p: p.name.lower())


class Controller:
    def __init__(self, settings: Settings | None = None, *, persist: bool = True):
        self.settings = settings or Settings.load()
        self.persist = persist
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Status], None]] = []
        self._pipeline = None
        self._thread: threading.Thread | None = None
        self._camera = None
        self._mic = None
        self._ring = None
        self._renderer = None
        self._extra_sinks: list = []
        self.error: str | None = None

    # --- observers ----------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Status], None]) -> None:
        self._listeners.append(callback)

    def _changed(self) -> None:
        status = self.status()
        for callback in list(self._listeners):
            try:
                callback(status)
            except Exception:  # a broken listener must not break the controller
                log.exception("status listener failed")

    def _save(self) -> None:
        if self.persist:
            try:
                self.settings.save()
            except OSError as exc:
                log.warning("could not save settings: %s", exc)

    # --- state ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._pipeline is not None

    def status(self) -> Status:
        with self._lock:
            fps, p95, state = 0.0, None, "stopped"
            pipeline = self._pipeline
            if pipeline is not None:
                recent = [r for r in pipeline.stats.records[-90:] if time.monotonic() - r.emitted < 3.0]
                if len(recent) > 1:
                    span = recent[-1].emitted - recent[0].emitted
                    fps = (len(recent) - 1) / span if span > 0 else 0.0
                    lat = [r.latency for r in recent if r.latency is not None]
                    p95 = float(np.percentile(lat, 95)) * 1000 if lat else None
                talking = any(r.alpha > 0 for r in recent[-15:])
                state = "paused" if pipeline.paused else "live" if talking else "silent"
            if self.error:
                state = "error"
            lipsync = self._renderer.lipsync if self._renderer is not None else None
            return Status(
                state=state,
                photo=self.settings.photo,
                mic=self._mic.device_name if self._mic is not None and getattr(self._mic, "device_name", None) else self.settings.mic,
                engine=getattr(lipsync, "name", None) or self.settings.engine,
                device=self.settings.device,
                camera=getattr(self._camera, "device", None),
                fps=round(fps, 1),
                latency_ms_p95=round(p95, 1) if p95 is not None else None,
                error=self.error,
            )

    # --- commands --------------------------------------------------------------------------------
    def start(self) -> Status:
        """Open the camera and the microphone and start drawing frames."""
        from .audio_source import AudioError, AudioRing, MicrophoneSource
        from .pipeline import LivePipeline
        from .sinks import VirtualCameraSink

        if self.running:
            return self.status()
        # Loading a model can take seconds: build outside the lock so status() keeps answering meanwhile.
        try:
            renderer, fmt, clock = self._build_renderer(self._current_photo())
        except Exception as exc:
            return self._fail_start(exc)
        with self._lock:
            if self.running:
                return self.status()
            try:
                camera = VirtualCameraSink(fmt.width, fmt.height, clock.fps, backend=self.settings.camera_backend,
                                           device=self.settings.camera_device)
            except Exception as exc:
                return self._fail_start(exc)
            ring = AudioRing()
            self._renderer, self._camera, self._ring = renderer, camera, ring
            self._pipeline = LivePipeline(renderer, [camera, *self._extra_sinks], ring, clock)
            self._thread = threading.Thread(target=self._run_pipeline, name="frames", daemon=True)
            self._thread.start()
            self.error = None
            mic = MicrophoneSource(ring, device=self.settings.mic)
            try:
                mic.start()
                self._mic = mic
            except AudioError as exc:  # the camera keeps showing the idle face; the user can pick another mic
                self.error = f"microphone: {str(exc).splitlines()[0]}"
            self.settings.camera_on = True
            self._save()
        self._changed()
        return self.status()

    def _fail_start(self, exc: Exception) -> Status:
        """Report why the camera could not start; expected failures are re-raised for the caller to show."""
        if not isinstance(exc, AvatarCamError):
            log.exception("the camera could not start")
            exc = AvatarCamError(f"the camera could not start: {exc}", hint="see the log (tray: Open log)")
        self.error = str(exc).splitlines()[0]
        self._changed()
        raise exc

    def _run_pipeline(self) -> None:
        pipeline = self._pipeline
        try:
            pipeline.run()
        except Exception as exc:  # keep the daemon alive; report the fault
            log.exception("the frame thread stopped")
            self.error = f"the camera pipeline stopped: {exc}"
            self._changed()

    def stop(self) -> Status:
        """Close the camera and release the microphone."""
        with self._lock:
            pipeline, thread, mic, camera = self._pipeline, self._thread, self._mic, self._camera
            self._pipeline = self._thread = self._mic = self._camera = self._renderer = self._ring = None
            if pipeline is not None:
                pipeline.stop()
            if thread is not None:
                thread.join(timeout=5)
            if mic is not None:
                mic.stop()
            if camera is not None:
                camera.close()
            self.error = None
            self.settings.camera_on = False
            self._save()
        self._changed()
        return self.status()

    def pause(self) -> Status:
        """Freeze on the idle face (the camera stays open)."""
        return self._set_paused(True)

    def resume(self) -> Status:
        return self._set_paused(False)

    def _set_paused(self, paused: bool) -> Status:
        with self._lock:
            if self._pipeline is None:
                raise AvatarCamError("the camera is not running", hint="start it first (avatar-cam ctl start)")
            self._pipeline.paused = paused
        self._changed()
        return self.status()

    def set_photo(self, path: str | Path) -> Status:
        """Switch to another photo. A photo that cannot be used raises, and the current one stays."""
        from .portrait import Portrait

        path = Path(path).expanduser()
        portrait = Portrait.load(path)  # raises PortraitError with a message the user can act on
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.request_portrait(portrait)
            self.settings.photo = str(path)
            self.settings.face_box = None
            if self.error and "photo" in self.error:
                self.error = None
            self._save()
        self._changed()
        return self.status()

    def add_photo(self, source: str | Path) -> Status:
        """Copy a photo into the library and switch to it."""
        from .portrait import Portrait

        source = Path(source).expanduser()
        Portrait.load(source)  # refuse before copying anything
        photos_dir().mkdir(parents=True, exist_ok=True)
        dest = photos_dir() / source.name
        n = 1
        while dest.exists() and dest.resolve() != source.resolve():
            dest = photos_dir() / f"{source.stem}-{n}{source.suffix}"
            n += 1
        if dest.resolve() != source.resolve():
            shutil.copy2(source, dest)
        return self.set_photo(dest)

    def set_mic(self, name: str | None) -> Status:
        """Switch microphone without closing the camera; a device that cannot open raises, the old one stays."""
        from .audio_source import MicrophoneSource, find_input_device

        if name is not None:
            find_input_device(name)  # raises AudioError listing what exists
        with self._lock:
            if self._ring is not None:
                new = MicrophoneSource(self._ring, device=name)
                old, self._mic = self._mic, None
                if old is not None:
                    old.stop()  # one writer at a time: the ring's sample clock simply continues
                try:
                    new.start()
                except AvatarCamError:
                    if old is not None:
                        old.start()
                        self._mic = old
                    raise
                self._mic = new
                if self.error and self.error.startswith("microphone"):
                    self.error = None
            self.settings.mic = name
            self._save()
        self._changed()
        return self.status()

    def set_engine(self, engine: str) -> Status:
        """Switch lip-sync engine (wav2lip / lite) between two frames."""
        from .engines import make_lipsync

        lipsync = make_lipsync(engine, self.settings.device, self.settings.precision)
        with self._lock:
            if self._pipeline is not None:
                renderer, portrait = self._renderer, self._renderer.compositor.portrait

                def swap() -> None:
                    lipsync.set_face(portrait)
                    renderer.lipsync = lipsync

                self._pipeline.call_between_frames(swap)
            self.settings.engine = engine
            self._save()
        self._changed()
        return self.status()

    def update_settings(self, **changes) -> Status:
        """Change settings; idle motion switches between frames, output size/fps/engine changes reopen the camera."""
        from .idle_motion import IdleSettings

        with self._lock:
            for key, value in changes.items():
                if not hasattr(self.settings, key) or key == "notices":
                    raise AvatarCamError(f"unknown setting {key!r}")
                setattr(self.settings, key, value)
            self._save()
            live_only = set(changes) <= {"idle_blinks", "idle_head_motion", "idle_breathing", "virtual_mic_offset_ms",
                                         "start_at_login"}
            restart = self.running and not live_only
            if self.running and live_only and self._renderer is not None:
                s, renderer = self.settings, self._renderer
                idle = IdleSettings(s.idle_blinks, s.idle_head_motion, s.idle_breathing)
                self._pipeline.call_between_frames(lambda: renderer.set_idle(idle))
        if restart:
            self.stop()
            self.start()
        else:
            self._changed()
        return self.status()

    # --- helpers ---------------------------------------------------------------------------------
    def _current_photo(self) -> Path:
        if self.settings.photo and Path(self.settings.photo).is_file():
            return Path(self.settings.photo)
        library = photo_library()
        if library:
            self.settings.photo = str(library[0])
            return library[0]
        raise AvatarCamError("no photo chosen yet", hint="add one from the tray (Photo > Add photo...) or: avatar-cam ctl photo PATH")

    def _build_renderer(self, photo: Path):
        from .compositor import OutputFormat
        from .engines import make_lipsync
        from .frame_clock import FrameClock
        from .idle_motion import IdleSettings
        from .portrait import Portrait
        from .renderer import FrameRenderer

        s = self.settings
        fmt = OutputFormat(s.width, s.height, s.fit, s.mirror)
        clock = FrameClock(s.fps, s.lookahead_ms / 1000.0)
        portrait = Portrait.load(photo, face_box=tuple(s.face_box) if s.face_box else None)
        lipsync = make_lipsync(s.engine, s.device, s.precision)
        idle = IdleSettings(s.idle_blinks, s.idle_head_motion, s.idle_breathing)
        return FrameRenderer(lipsync, portrait, fmt, clock, idle=idle), fmt, clock
