"""The controller: the one object that changes what the daemon does.

The tray menu, the control socket (`avatar-cam ctl`) and the CLI call only these methods, from their own
threads; a lock serialises them. The controller owns the pieces of the live path (camera sink, microphone
source, audio ring, pipeline and its frame thread, and the optional preview window and "Avatar Cam
Microphone") and changes the running pipeline only through `LivePipeline.call_between_frames`, so switching
photo, engine, microphone, mirror or preview never closes the camera; only its size, frame rate and device do.

The microphone's side is mic_watch.py's; the preview and the virtual microphone are extras.py's. Threads: commands run on their callers' threads under `_lock`; the frame thread ("frames") runs the pipeline;
the "health" thread (`_watch`) reopens a lost microphone and reports faults.

Errors in what the user asks for (a photo with no face, a missing microphone) raise `AvatarCamError` and
leave the current state as it was. Faults while running are reported in `status()` and to listeners; the
daemon keeps running.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from avatar_cam.daemon.changes import prepare_changes
from avatar_cam.daemon.extras import Extras
from avatar_cam.daemon.mic_watch import MicrophoneWatch
from avatar_cam.daemon.photos import copy_into_library, current_photo
from avatar_cam.daemon.status import Status, lips_text, mouth_rate, recent_figures
from avatar_cam.errors import AvatarCamError, UnknownCameraBackendError
from avatar_cam.live.assemble import build_renderer, load_portrait, picture_from_settings
from avatar_cam.live.performance import performance
from avatar_cam.settings import Settings

log = logging.getLogger(__name__)

# Settings that change what the camera device is asked for (or the frame clock): only these reopen it.
REOPENS_CAMERA = frozenset({"width", "height", "fps", "camera_backend", "camera_device", "lookahead_ms"})


class Controller(MicrophoneWatch, Extras):
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
        self._preview = None  # the PreviewSink in the pipeline's sinks, while the camera runs
        self._vmic = None  # the VirtualMicrophone fed from the ring, while the camera runs
        self._extras_fault: dict[str, str] = {}  # "preview" / "virtual_mic" -> why it is not working
        self._rescans = 0  # PortAudio rescans so far: a stream opened before one is dead
        self._next_mic_search = 0.0  # when the watchdog may next look for a chosen microphone PortAudio lacks
        self._kept_vmic_devices = None  # "Avatar Cam Microphone" kept in place while the camera reopens
        self._camera_notice: str | None = None  # why the camera runs at another size than the settings say

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

    @property
    def preview(self) -> bool:
        """Running: whether the preview window shows; stopped: whether it will when the camera starts."""
        return self._preview is not None if self.running else self.settings.preview

    def status(self) -> Status:
        with self._lock:
            fps, p95, state = 0.0, None, "stopped"
            pipeline = self._pipeline
            mouth_hz = target_hz = None
            if pipeline is not None:
                fps, p95, talking = recent_figures(pipeline.stats.records)
                mouth_hz = mouth_rate(pipeline.stats.records, pipeline.clock.fps)
                mouths = pipeline.mouths
                target_hz = mouths.target_hz() if mouths is not None and not self._renderer.draws_inline else None
                state = ("paused" if pipeline.paused else "standby" if not pipeline.watched
                         else "live" if talking else "silent")
            error = self.error or self._camera_fault() or self._mic_fault or self._extras_problem()
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
                preview=self._preview is not None,
                virtual_mic=self._vmic_status(),
                mouth_hz=round(mouth_hz, 1) if mouth_hz is not None else None,
                performance=self.settings.performance,
                lips=lips_text(mouth_hz, target_hz),
                notice=self._camera_notice,
                camera_priority=(pipeline.priority or "normal") if pipeline is not None else None,
            )

    # --- commands --------------------------------------------------------------------------------
    def start(self) -> Status:
        """Open the camera and the microphone and start drawing frames; then the preview window and
        "Avatar Cam Microphone" if they are on (their failures are reported in the status, the camera runs)."""
        from avatar_cam.audio.ring import AudioRing
        from avatar_cam.audio.sources import MicrophoneSource
        from avatar_cam.errors import AudioError, CameraError
        from avatar_cam.live.pipeline import LivePipeline
        from avatar_cam.outputs.camera import CameraInUseError, ReconnectingCamera, VirtualCameraSink

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

            notice = None
            try:
                try:
                    camera = ReconnectingCamera(open_camera, camera=open_camera())
                except CameraInUseError as exc:
                    # A call app holds the device at the size it had: keep sending that size (its track stays
                    # live) rather than nothing; the chosen size waits for the device, as the notice says.
                    renderer, fmt, clock = self._build_renderer(portrait, size=exc.size)
                    notice = f"{exc}; {exc.hint}"
                    log.warning("%s", notice)
                    camera = ReconnectingCamera(open_camera, camera=open_camera())
            except UnknownCameraBackendError as exc:  # a setting to fix, not a device to wait for
                return self._fail_start(exc)
            except CameraError as exc:
                # Missing or busy (v4l2loopback not loaded yet, OBS holding it): run anyway and keep trying.
                camera = ReconnectingCamera(open_camera, error=f"{str(exc).splitlines()[0]} (retrying in 1 s)")
            except Exception as exc:
                return self._fail_start(exc)
            ring = AudioRing()
            self._renderer, self._camera, self._ring = renderer, camera, ring
            self._pipeline = LivePipeline(renderer, [camera, *self._extra_sinks], ring, clock,
                                          performance=performance(self.settings.performance))
            self._thread = threading.Thread(target=self._run_pipeline, name="frames", daemon=True)
            self._thread.start()
            self.error, self._mic_fault, self._extras_fault = photo_note, None, {}
            self._camera_notice = notice
            self._find_unlisted_mic(self.settings.mic)  # plugged in while the camera was off
            mic = MicrophoneSource(ring, device=self.settings.mic)
            now = time.monotonic()
            self._mic_opened(now, 0)
            self._mic_retry_at, self._mic_backoff_s = now + self.MIC_RETRY_S, self.MIC_RETRY_S
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
        # The extras take a moment each (a window process, pactl): the camera is live meanwhile.
        if self.settings.preview:
            self._try_extra("preview", self._attach_preview)
        if self.settings.virtual_mic:
            self._try_extra("virtual_mic", self._attach_vmic)
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

    def stop(self, remember: bool = True) -> Status:
        """Close the camera and release the microphone.

        `remember`: the user turned the camera off (`camera_on` becomes False, saved). Quitting passes False:
        the daemon ends without writing settings, so the next start restores the camera as the user left it
        and an edit of settings.toml made after quitting stays."""
        self._health_stop.set()  # first, without the lock: the watchdog may be waiting for it
        health, self._health = self._health, None
        if health is not None and health is not threading.current_thread():
            health.join(timeout=5)
        with self._lock:
            pipeline, thread, mic, camera = self._pipeline, self._thread, self._mic, self._camera
            preview, vmic = self._preview, self._vmic
            if self._renderer is not None:
                self._last_portrait = self._renderer.compositor.portrait
            self._pipeline = self._thread = self._mic = self._camera = self._renderer = self._ring = None
            self._preview = self._vmic = None
            if pipeline is not None:
                pipeline.stop()
            if thread is not None:
                thread.join(timeout=5)
            if mic is not None:
                mic.stop()
            for part in (vmic, camera, preview):
                if part is not None:
                    part.close()
            self.error = self._mic_fault = self._camera_notice = None
            self._extras_fault = {}
            if remember and self.settings.camera_on:
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
        return self.update_settings(photo=str(Path(path).expanduser()))

    def add_photo(self, source: str | Path) -> Status:
        """Copy a photo into the library and switch to it."""
        from avatar_cam.video.portrait import Portrait

        source = Path(source).expanduser()
        Portrait.load(source)  # refuse before copying anything
        return self.set_photo(copy_into_library(source))

    def set_engine(self, engine: str) -> Status:
        """Switch lip-sync engine (wav2lip / lite) between two frames."""
        return self.update_settings(engine=engine)

    def update_settings(self, **changes) -> Status:
        """Change settings. While the camera runs, each change is applied between two frames, without closing
        the camera, except size, frame rate, camera device and lookahead (`REOPENS_CAMERA`), which reopen it.

        Everything is checked before anything changes: a photo without a face, an unknown engine or an output
        format that cannot be raise, and no setting changes."""
        for key in changes:
            if not hasattr(self.settings, key) or key == "notices":
                raise AvatarCamError(f"unknown setting {key!r}")
        for key, command in (("mic", self.set_mic), ("preview", self.set_preview)):
            if key in changes:  # they have their own commands, with their own checks
                command(changes.pop(key))
        if not changes:
            return self.status()
        wanted = dataclasses.replace(self.settings, **changes)
        if "photo" in changes and "face_box" not in changes:
            wanted.face_box = None  # a box drawn on another photo
        # Raises before anything changes. A change that reopens the camera builds its renderer anew: nothing to prepare.
        renderer = None if REOPENS_CAMERA & changes.keys() else self._renderer
        live = prepare_changes(renderer, self.settings, changes, wanted)
        if changes.get("virtual_mic") and self.running:
            self._attach_vmic()  # raises, and nothing changed
        with self._lock:
            for key in (*changes, "face_box"):
                setattr(self.settings, key, getattr(wanted, key))
            if "photo" in changes and self.error and "photo" in self.error:
                self.error = None
            self._save()
            reopen = self.running and bool(REOPENS_CAMERA & changes.keys())
            if self.running and not reopen:
                for apply in live:
                    apply(self._pipeline)
                if self._vmic is not None and "virtual_mic_offset_ms" in changes:
                    self._vmic.set_offset_ms(self.settings.virtual_mic_offset_ms)
        if "virtual_mic" in changes and not self.settings.virtual_mic:
            self._detach_vmic()
        if reopen:
            self._reopen()
        else:
            self._changed()
        return self.status()

    def _reopen(self) -> None:
        """Stop and start again (a new camera size, frame rate or device), leaving "Avatar Cam Microphone" in
        place meanwhile: a call app listening to it hears a second of silence instead of losing its microphone."""
        self._kept_vmic_devices = self._detach_vmic(keep_devices=True)
        try:
            self.stop()
            self.start()
        finally:
            leftover, self._kept_vmic_devices = self._kept_vmic_devices, None
            if leftover is not None:  # the start failed before it took them
                leftover.remove()

    # --- the watchdog: faults while running --------------------------------------------------------
    WATCH_S = 0.25  # how often the watchdog looks
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
            self._watch_preview()
            self._watch_vmic()
            with self._lock:
                seen = (self.error, self._camera_fault(), self._mic_fault, self._extras_problem())
            if seen != last:
                last = seen
                self._changed()

    def _camera_fault(self) -> str | None:
        why = getattr(self._camera, "error", None)
        return f"virtual camera unavailable: {why}" if why else None

    # --- helpers ---------------------------------------------------------------------------------
    def _portrait_for_start(self):
        """The photo to start with, and a note for the status when it is one whose file has gone away."""

        s, kept = self.settings, self._last_portrait
        if s.photo and not Path(s.photo).is_file() and kept is not None and Path(str(kept.path)) == Path(s.photo):
            return kept, (f"photo {Path(s.photo).name} is gone (deleted or moved): still showing it from memory; "
                          "choose another photo (tray: Photo, or avatar-cam ctl photo PATH)")
        return load_portrait(current_photo(self.settings), s.face_box), None

    def _build_renderer(self, portrait, size: tuple[int, int] | None = None):
        """The renderer for the settings (at `size` instead of their width and height, if given)."""
        settings = self.settings if size is None else dataclasses.replace(self.settings, width=size[0], height=size[1])
        try:
            picture = picture_from_settings(settings)
        except ValueError as exc:
            raise AvatarCamError(str(exc), hint="fix it in settings.toml, or from the tray's Camera menu") from None
        return build_renderer(portrait, picture), picture.fmt, picture.clock
