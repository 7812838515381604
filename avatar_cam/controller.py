"""The controller: the one object that changes what the daemon does.

The tray menu, the control socket (`avatar-cam ctl`) and the CLI call only these methods, from their own
threads; a lock serialises them. The controller owns the pieces of the live path (camera sink, microphone
source, audio ring, pipeline and its frame thread, and the optional preview window and "Avatar Cam
Microphone") and changes the running pipeline only through `LivePipeline.call_between_frames`, so switching
photo, engine, microphone, mirror or preview never closes the camera; only its size, frame rate and device do.

Errors in what the user asks for (a photo with no face, a missing microphone) raise `AvatarCamError` and
leave the current state as it was. Faults while running are reported in `status()` and to listeners; the
daemon keeps running.
"""

from __future__ import annotations

import dataclasses
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
# Settings that change what the camera device is asked for (or the frame clock): only these reopen it.
REOPENS_CAMERA = frozenset({"width", "height", "fps", "camera_backend", "camera_device", "lookahead_ms"})


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
    preview: bool = False  # the preview window is showing
    virtual_mic: dict | None = None  # None: off; else its state, what to pick in the call app, its delay

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
        self._preview = None  # the PreviewSink in the pipeline's sinks, while the camera runs
        self._vmic = None  # the VirtualMicrophone fed from the ring, while the camera runs
        self._extras_fault: dict[str, str] = {}  # "preview" / "virtual_mic" -> why it is not working
        self._rescans = 0  # PortAudio rescans so far: a stream opened before one is dead
        self._next_mic_search = 0.0  # when the watchdog may next look for a chosen microphone PortAudio lacks
        self._kept_vmic_devices = None  # "Avatar Cam Microphone" kept in place while the camera reopens

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
            if pipeline is not None:
                recent = [r for r in pipeline.stats.records[-90:] if time.monotonic() - r.emitted < 3.0]
                if len(recent) > 1:
                    span = recent[-1].emitted - recent[0].emitted
                    fps = (len(recent) - 1) / span if span > 0 else 0.0
                    lat = [r.latency for r in recent if r.latency is not None]
                    p95 = float(np.percentile(lat, 95)) * 1000 if lat else None
                talking = any(r.alpha > 0 for r in recent[-15:])
                state = "paused" if pipeline.paused else "live" if talking else "silent"
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
            )

    def _extras_problem(self) -> str | None:
        """Under the lock: why the preview or the virtual microphone the user asked for is not working."""
        vmic_state = self._vmic.status_text if self._vmic is not None else ""
        vmic_fault = vmic_state.removeprefix("error: ") if vmic_state.startswith("error") else self._extras_fault.get("virtual_mic")
        if vmic_fault:
            return f"Avatar Cam Microphone: {vmic_fault}"
        return self._extras_fault.get("preview")

    def _vmic_status(self) -> dict | None:
        if not self.settings.virtual_mic:
            return None
        if self._vmic is not None:
            return self._vmic.status()
        fault = self._extras_fault.get("virtual_mic")
        return {"state": f"error: {fault}" if fault else "stopped", "device": None}

    # --- commands --------------------------------------------------------------------------------
    def start(self) -> Status:
        """Open the camera and the microphone and start drawing frames; then the preview window and
        "Avatar Cam Microphone" if they are on (their failures are reported in the status, the camera runs)."""
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
            self.error, self._mic_fault, self._extras_fault = photo_note, None, {}
            self._find_unlisted_mic(self.settings.mic)  # plugged in while the camera was off
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
        # The extras take a moment each (a window process, pactl): the camera is live meanwhile.
        if self.settings.preview:
            self._try_extra("preview", self._attach_preview)
        if self.settings.virtual_mic:
            self._try_extra("virtual_mic", self._attach_vmic)
        return self.status()

    def _try_extra(self, name: str, attach: Callable[[], None]) -> None:
        """Start the preview or the virtual microphone; a failure goes to the status, the camera keeps running."""
        try:
            attach()
        except AvatarCamError as exc:
            log.warning("%s", str(exc).replace("\n", " "))
            with self._lock:
                if self.running:
                    self._extras_fault[name] = str(exc).splitlines()[0]
        self._changed()

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
            self.error = self._mic_fault = None
            self._extras_fault = {}
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
        """Switch microphone without closing the camera; a device that cannot open raises, the old one stays.

        A name this process's PortAudio does not list may belong to a device plugged in since it started:
        PortAudio then rescans (see `_find_unlisted_mic`) before giving up."""
        from .audio_source import AudioError, MicrophoneSource, find_input_device

        if name is not None:
            try:
                find_input_device(name)
            except AudioError:
                if not self._find_unlisted_mic(name):
                    raise
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

    def _find_unlisted_mic(self, name: str | None) -> bool:
        """Look for microphone `name` among the devices there are now, not those PortAudio listed when it
        started here; True if it is there now.

        Rescanning ends every stream this process has open, so with streams open it happens only if a fresh
        process lists the name (a typo leaves the running microphone alone). The microphone is closed for
        it (the caller is switching away from it; else the watchdog reopens it) and "Avatar Cam Microphone"
        pauses for a moment."""
        from .audio_source import AudioError, find_input_device, fresh_input_device_names, names_input_device

        if name is None:
            return False
        try:
            find_input_device(name)
            return True
        except AudioError:
            pass
        if self._mic is not None or self._vmic is not None:
            names = fresh_input_device_names()
            if names is not None and not names_input_device(name, names):
                return False

        with self._lock:
            mic, self._mic = self._mic, None
            if mic is not None:
                mic.stop()
            if self._vmic is not None:
                try:
                    self._vmic.reopen_stream(self._rescan_portaudio)
                except AvatarCamError as exc:
                    self._extras_fault["virtual_mic"] = str(exc).splitlines()[0]
            else:
                self._rescan_portaudio()
        log.info("PortAudio rescanned its devices, looking for %r", name)
        try:
            find_input_device(name)
            return True
        except AudioError:
            return False

    def _rescan_portaudio(self) -> None:
        from .audio_source import PORTAUDIO_LOCK, rescan_devices

        with PORTAUDIO_LOCK:  # a stream the watchdog opened before this sees the count change and is dropped
            self._rescans += 1
            rescan_devices()

    def set_engine(self, engine: str) -> Status:
        """Switch lip-sync engine (wav2lip / lite) between two frames."""
        return self.update_settings(engine=engine)

    def set_preview(self, on: bool) -> Status:
        """Show or hide the preview window; the choice is kept for the next start. Showing it where no window
        can open (no display) raises, and the camera goes on as it was."""
        from .sinks import PREVIEW_HINT, preview_unavailable

        on = bool(on)
        if on and not self.running and (problem := preview_unavailable()):
            raise AvatarCamError(problem, hint=PREVIEW_HINT)
        if on:
            self._attach_preview()
        else:
            self._detach_preview()
        with self._lock:
            if not (on and self.running):  # else the attach recorded it, before a window closed at once could
                self.settings.preview = on
            self._extras_fault.pop("preview", None)
            self._save()
        self._changed()
        return self.status()

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
        live = self._prepare_live(changes, wanted)  # raises before anything changes
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

    def _prepare_live(self, changes: dict, wanted: Settings) -> list[Callable]:
        """Check the changed settings; return what applies them to a running pipeline between two frames,
        as calls taking the pipeline, in order. Loads a new photo (always: that is how a photo is checked)
        and, while running, a new engine."""
        from .compositor import OutputFormat
        from .engines import ENGINES, make_lipsync
        from .idle_motion import IdleSettings
        from .portrait import Portrait

        live: list[Callable] = []
        renderer = self._renderer
        if changes.keys() & {"engine", "device", "precision"}:
            if wanted.engine not in ENGINES:
                raise AvatarCamError(f"unknown lip-sync engine {wanted.engine!r}", hint=f"choose one of: {', '.join(ENGINES)}")
            if renderer is not None:
                lipsync = make_lipsync(wanted.engine, wanted.device, wanted.precision)

                def swap_engine() -> None:
                    lipsync.set_face(renderer.compositor.portrait)
                    renderer.lipsync = lipsync

                live.append(lambda pipeline: pipeline.call_between_frames(swap_engine))
        if changes.keys() & {"photo", "face_box"}:
            if not wanted.photo:
                raise AvatarCamError("no photo given", hint="avatar-cam ctl photo PATH")
            portrait = Portrait.load(Path(wanted.photo), face_box=tuple(wanted.face_box) if wanted.face_box else None)
            live.append(lambda pipeline: pipeline.request_portrait(portrait))
        if changes.keys() & {"fit", "mirror", "width", "height"}:
            try:
                fmt = OutputFormat(wanted.width, wanted.height, wanted.fit, wanted.mirror)
            except ValueError as exc:
                raise AvatarCamError(str(exc)) from None
            if renderer is not None:
                live.append(lambda pipeline: pipeline.call_between_frames(
                    lambda: renderer.set_portrait(renderer.compositor.portrait, fmt)))
        if changes.keys() & {"idle_blinks", "idle_head_motion", "idle_breathing"} and renderer is not None:
            idle = IdleSettings(wanted.idle_blinks, wanted.idle_head_motion, wanted.idle_breathing)
            live.append(lambda pipeline: pipeline.call_between_frames(lambda: renderer.set_idle(idle)))
        return live

    # --- the extras: preview window and "Avatar Cam Microphone" ----------------------------------------
    def _attach_preview(self) -> None:
        """Open the preview window and add it to the running pipeline's sinks (no-op when stopped or shown)."""
        from .sinks import PreviewSink

        if self._pipeline is None or self._preview is not None:
            return
        sink = PreviewSink()  # outside the lock: it starts a process and waits for its window
        with self._lock:
            pipeline = self._pipeline
            if pipeline is None or self._preview is not None:  # stopped, or opened by someone else meanwhile
                sink.close()
                return
            self._preview = sink
            self.settings.preview = True
            pipeline.call_between_frames(lambda: pipeline.sinks.append(sink))

    def _detach_preview(self) -> None:
        with self._lock:
            sink, self._preview = self._preview, None
            pipeline = self._pipeline
            if sink is not None and pipeline is not None:

                def remove() -> None:
                    if sink in pipeline.sinks:
                        pipeline.sinks.remove(sink)

                pipeline.call_between_frames(remove)
        if sink is not None:
            sink.close()  # frames sent to it until the removal are dropped

    def _attach_vmic(self) -> None:
        """Create "Avatar Cam Microphone", fed from the ring and delayed by what the frames measure."""
        from .virtual_mic import VirtualMicrophone

        with self._lock:
            pipeline, thread, ring = self._pipeline, self._thread, self._ring
            if pipeline is None or self._vmic is not None:
                return
        vmic = VirtualMicrophone.for_clock(ring, pipeline.clock, self.settings.virtual_mic_offset_ms)
        kept, self._kept_vmic_devices = self._kept_vmic_devices, None
        vmic.start(devices=kept)  # outside the lock: pactl calls, ~0.3 s; raises VirtualMicError
        with self._lock:
            if self._pipeline is not pipeline or self._vmic is not None:
                vmic.close()
                return
            self._vmic = vmic
            self._extras_fault.pop("virtual_mic", None)
            pipeline.on_frame = vmic.observe_frame  # the frames' measured delay steers the voice's...
            pipeline.pace = vmic.frame_due  # ...and each frame leaves when the voice it shows plays
            vmic.bind_to(thread)  # gone with the frame thread, however it ends

    def _detach_vmic(self, keep_devices: bool = False):
        """Stop "Avatar Cam Microphone"; with `keep_devices`, leave it in place and return it (see
        `VirtualMicrophone.close`)."""
        with self._lock:
            vmic, self._vmic = self._vmic, None
            self._extras_fault.pop("virtual_mic", None)
            if self._pipeline is not None:
                self._pipeline.on_frame = self._pipeline.pace = None
        return vmic.close(keep_devices) if vmic is not None else None

    # --- the watchdog: faults while running --------------------------------------------------------
    WATCH_S = 0.25  # how often the watchdog looks
    MIC_RETRY_S = 0.75  # between reopen attempts of a lost microphone
    MIC_STALL_S = 1.0  # a "running" microphone that delivers nothing for this long is lost
    MIC_OPEN_GRACE_S = 3.0  # a freshly opened stream may take this long to deliver (PulseAudio after a restart: ~2 s)
    MIC_SEARCH_S = 3.0  # between looks for a chosen microphone this process's PortAudio does not list

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
            with self._lock:
                seen = (self.error, self._camera_fault(), self._mic_fault, self._extras_problem())
            if seen != last:
                last = seen
                self._changed()

    def _watch_preview(self) -> None:
        """A preview window the user closed turns the preview off; one that failed says why in the status."""
        sink = self._preview
        if sink is None or sink.alive:
            return
        by_user = sink.closed_by_user
        self._detach_preview()
        with self._lock:
            if by_user:
                self.settings.preview = False
                self._save()
            elif self.running:
                self._extras_fault["preview"] = sink.error
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
        self._search_missing_mic()
        rescans = self._rescans
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
            # Stopped, or set_mic won meanwhile, or a PortAudio rescan ended the new stream.
            if stop.is_set() or self._ring is not ring or self._mic is not None or self._rescans != rescans:
                new.stop()
                return
            now = time.monotonic()
            self._mic, self._mic_opened_at, self._mic_seen = new, now, (ring.total, now)

    def _search_missing_mic(self) -> None:
        """The chosen microphone, unplugged and plugged in again, may come back under a new ALSA card that
        this process's PortAudio does not list: look for it among the devices there are now, every
        `MIC_SEARCH_S` (in a fresh process while streams are open; see `_find_unlisted_mic`)."""
        now = time.monotonic()
        if self.settings.mic is not None and now >= self._next_mic_search:
            self._next_mic_search = now + self.MIC_SEARCH_S
            self._find_unlisted_mic(self.settings.mic)

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
