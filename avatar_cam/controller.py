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
        self.error: str | None = None  # a fault from a command or the start; the watchdog's faults are below
        self._health: threading.Thread | None = None
        self._health_stop = threading.Event()
        self._mic_fault: str | None = None  # set and cleared by the watchdog (under the lock)
        self._mic_retry_at = 0.0
        self._mic_opened_at = 0.0
        self._mic_seen = (0, 0.0)  # (ring total, monotonic time it last grew)
        self._last_portrait = None  # the photo shown when the camera last stopped: a restart survives its file going away

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
            error = self.error or self._camera_fault() or self._mic_fault
            if error:
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
                error=error,
            )

    # --- commands --------------------------------------------------------------------------------
    def start(self) -> Status:
        """Open the camera and the microphone and start drawing frames."""
        from .audio_source import AudioError, AudioRing, MicrophoneSource
        from .pipeline import LivePipeline
        from .sinks import CameraError, ReconnectingCamera, VirtualCameraSink

        if self.running:
            return self.status()
        # Loading a model can take seconds: build outside the lock so status() keeps answering meanwhile.
        try:
            portrait, photo_note = self._portrait_for_start()
            renderer, fmt, clock = self._build_renderer(portrait)
        except Exception as exc:
            return self._fail_start(exc)
        with self._lock:
            if self.running:
                return self.status()
            backend, device = self.settings.camera_backend, self.settings.camera_device

            def open_camera() -> VirtualCameraSink:
                return VirtualCameraSink(fmt.width, fmt.height, clock.fps, backend=backend, device=device)

            try:
                camera = ReconnectingCamera(open_camera, camera=open_camera())
            except CameraError as exc:
                if str(exc).startswith("unknown virtual camera backend"):  # a setting to fix, not a device to wait for
                    return self._fail_start(exc)
                # Missing or busy (v4l2loopback not loaded yet, OBS holding it): run anyway and keep trying.
                camera = ReconnectingCamera(open_camera, error=f"{str(exc).splitlines()[0]} (retrying in 1 s)")
            except Exception as exc:
                return self._fail_start(exc)
            ring = AudioRing()
            self._renderer, self._camera, self._ring = renderer, camera, ring
            self._pipeline = LivePipeline(renderer, [camera, *self._extra_sinks], ring, clock)
            self._thread = threading.Thread(target=self._run_pipeline, name="frames", daemon=True)
            self._thread.start()
            self.error, self._mic_fault = photo_note, None
            mic = MicrophoneSource(ring, device=self.settings.mic)
            now = time.monotonic()
            self._mic_opened_at, self._mic_seen, self._mic_retry_at = now, (0, now), now + self.MIC_RETRY_S
            try:
                mic.start()
                self._mic = mic
            except AudioError as exc:  # the camera keeps showing the idle face; the watchdog keeps trying
                self._mic_fault = f"microphone: {str(exc).splitlines()[0]}"
            self._health_stop = threading.Event()
            self._health = threading.Thread(target=self._watch, args=(self._health_stop,), name="health", daemon=True)
            self._health.start()
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
        self._health_stop.set()  # first, without the lock: the watchdog may be waiting for it
        health, self._health = self._health, None
        if health is not None and health is not threading.current_thread():
            health.join(timeout=5)
        with self._lock:
            pipeline, thread, mic, camera = self._pipeline, self._thread, self._mic, self._camera
            if self._renderer is not None:
                self._last_portrait = self._renderer.compositor.portrait
            self._pipeline = self._thread = self._mic = self._camera = self._renderer = self._ring = None
            if pipeline is not None:
                pipeline.stop()
            if thread is not None:
                thread.join(timeout=5)
            if mic is not None:
                mic.stop()
            if camera is not None:
                camera.close()
            self.error = self._mic_fault = None
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
                now = time.monotonic()
                self._mic_opened_at, self._mic_seen, self._mic_fault = now, (self._ring.total, now), None
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

    # --- the watchdog: faults while running --------------------------------------------------------
    WATCH_S = 0.25  # how often the watchdog looks
    MIC_RETRY_S = 0.75  # between reopen attempts of a lost microphone
    MIC_STALL_S = 1.0  # a "running" microphone that delivers nothing for this long is lost
    MIC_OPEN_GRACE_S = 3.0  # a freshly opened stream may take this long to deliver (PulseAudio after a restart: ~2 s)

    def _watch(self, stop: threading.Event) -> None:
        """The "health" thread: reopens a lost microphone and reports camera faults, until `stop` is set.

        Opening a stream can block on a sound server that is half there, so it happens outside the lock:
        `status()` and the other commands keep answering meanwhile.
        """
        last = None
        while not stop.wait(self.WATCH_S):
            with self._lock:
                if stop.is_set() or self._pipeline is None:
                    return
                lost = self._lost_mic(time.monotonic())
            if lost is not None:
                try:
                    self._reopen_mic(stop, *lost)
                except Exception:  # noqa: BLE001  (the watchdog itself must never die)
                    log.exception("reopening the microphone failed")
            with self._lock:
                seen = (self.error, self._camera_fault(), self._mic_fault)
            if seen != last:
                last = seen
                self._changed()

    def _camera_fault(self) -> str | None:
        why = getattr(self._camera, "error", None)
        return f"virtual camera unavailable: {why}" if why else None

    def _lost_mic(self, now: float):
        """Under the lock: is the microphone lost (stream error, or nothing from a "running" stream)?

        Returns (ring, detached old source or None) when it is time to reopen it, else None.
        """
        ring, mic = self._ring, self._mic
        if ring is None:
            return None
        total = ring.total
        if total != self._mic_seen[0]:
            self._mic_seen = (total, now)
        if mic is None:
            problem = self._mic_fault or "microphone lost"
        elif mic.status.startswith("error"):
            problem = mic.status.removeprefix("error: ")
        elif now - max(self._mic_seen[1], self._mic_opened_at + self.MIC_OPEN_GRACE_S - self.MIC_STALL_S) > self.MIC_STALL_S:
            problem = f"no sound from it for {now - self._mic_seen[1]:.0f} s"
        else:
            if self._mic_fault and self._mic_seen[1] > self._mic_opened_at:
                log.info("the microphone is back")
                self._mic_fault = None
            return None
        if not self._mic_fault:  # just lost
            log.warning("microphone lost (%s): reconnecting", problem)
            self._mic_fault = f"microphone lost: reconnecting ({problem})"
        if now < self._mic_retry_at:
            return None
        self._mic_retry_at = now + self.MIC_RETRY_S
        self._mic = None
        return ring, mic

    def _reopen_mic(self, stop: threading.Event, ring, old) -> None:
        from .audio_source import AudioError, MicrophoneSource

        if old is not None:
            old.stop()
        new = MicrophoneSource(ring, device=self.settings.mic)
        try:
            new.start()
        except AudioError as exc:
            with self._lock:
                if not stop.is_set() and self._ring is ring and self._mic is None \
                        and not (self._mic_fault or "").startswith("microphone: "):  # keep the start's own message
                    self._mic_fault = f"microphone lost: reconnecting ({str(exc).splitlines()[0]})"
            return
        with self._lock:
            if stop.is_set() or self._ring is not ring or self._mic is not None:  # stopped, or set_mic won meanwhile
                new.stop()
                return
            now = time.monotonic()
            self._mic, self._mic_opened_at, self._mic_seen = new, now, (ring.total, now)

    # --- helpers ---------------------------------------------------------------------------------
    def _current_photo(self) -> Path:
        if self.settings.photo and Path(self.settings.photo).is_file():
            return Path(self.settings.photo)
        library = photo_library()
        if library:
            self.settings.photo = str(library[0])
            return library[0]
        raise AvatarCamError("no photo chosen yet", hint="add one from the tray (Photo > Add photo...) or: avatar-cam ctl photo PATH")

    def _portrait_for_start(self):
        """The photo to start with, and a note for the status when it is one whose file has gone away."""
        from .portrait import Portrait

        s, kept = self.settings, self._last_portrait
        if s.photo and not Path(s.photo).is_file() and kept is not None and Path(str(kept.path)) == Path(s.photo):
            return kept, (f"photo {Path(s.photo).name} is gone (deleted or moved): still showing it from memory; "
                          "choose another photo (tray: Photo, or avatar-cam ctl photo PATH)")
        return Portrait.load(self._current_photo(), face_box=tuple(s.face_box) if s.face_box else None), None

    def _build_renderer(self, portrait):
        from .compositor import OutputFormat
        from .engines import make_lipsync
        from .frame_clock import FrameClock
        from .idle_motion import IdleSettings
        from .renderer import FrameRenderer

        s = self.settings
        fmt = OutputFormat(s.width, s.height, s.fit, s.mirror)
        clock = FrameClock(s.fps, s.lookahead_ms / 1000.0)
        lipsync = make_lipsync(s.engine, s.device, s.precision)
        idle = IdleSettings(s.idle_blinks, s.idle_head_motion, s.idle_breathing)
        return FrameRenderer(lipsync, portrait, fmt, clock, idle=idle), fmt, clock
