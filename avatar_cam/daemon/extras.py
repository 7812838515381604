"""The controller's extras: the preview window and "Avatar Cam Microphone", attached to the running pipeline.

Their failures go to the status; the camera runs on without them. "Avatar Cam Microphone" that failed to start
(no sound server yet at login, or one too busy to answer `pactl` in time) is tried again by the watchdog, backing
off from 2 s to 30 s, until it runs or the camera stops. `Controller` inherits these methods: they share its lock
and state (`_pipeline`, `_preview`, `_vmic`, `_extras_fault`...). They run on the caller's thread, and the
`_watch_*` ones on the "health" thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from avatar_cam.daemon.status import Status
from avatar_cam.errors import AvatarCamError
from avatar_cam.outputs.preview import PREVIEW_HINT, PreviewSink, preview_unavailable
from avatar_cam.vmic.microphone import VirtualMicrophone

log = logging.getLogger(__name__)


class Extras:
    VMIC_RETRY_S = 2.0  # a failed start of "Avatar Cam Microphone" is tried again after this, doubling...
    VMIC_RETRY_MAX_S = 30.0  # ...up to this
    _vmic_retry_s = VMIC_RETRY_S
    _vmic_retry_at = 0.0

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

    def _try_extra(self, name: str, attach: Callable[[], None]) -> None:
        """Start the preview or the virtual microphone; a failure goes to the status, the camera keeps running."""
        try:
            attach()
        except AvatarCamError as exc:
            log.warning("%s", str(exc).replace("\n", " "))
            with self._lock:
                if self.running:
                    self._extras_fault[name] = str(exc).splitlines()[0]
                    if name == "virtual_mic":  # the watchdog tries again (`_watch_vmic`)
                        self._vmic_retry_at = time.monotonic() + self._vmic_retry_s
                        self._vmic_retry_s = min(2 * self._vmic_retry_s, self.VMIC_RETRY_MAX_S)
        else:
            if name == "virtual_mic":
                self._vmic_retry_s = self.VMIC_RETRY_S
        self._changed()

    def set_preview(self, on: bool) -> Status:
        """Show or hide the preview window; the choice is kept for the next start. Showing it where no window
        can open (no display) raises, and the camera goes on as it was."""

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

    # --- the extras: preview window and "Avatar Cam Microphone" ----------------------------------------
    def _attach_preview(self) -> None:
        """Open the preview window and add it to the running pipeline's sinks (no-op when stopped or shown)."""

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

    def _watch_vmic(self) -> None:
        """Watchdog: let the virtual microphone notice a sound server that went away, and come back with it;
        start one that failed to start, when its retry is due."""
        vmic = self._vmic
        if vmic is not None:
            vmic.check()  # may call pactl and open a stream: outside the controller's lock
            return
        with self._lock:
            due = (self.running and self.settings.virtual_mic and "virtual_mic" in self._extras_fault
                   and time.monotonic() >= self._vmic_retry_at)
        if due:
            log.info("Avatar Cam Microphone: trying to start it again")
            self._try_extra("virtual_mic", self._attach_vmic)
            if not self.settings.virtual_mic:  # turned off while it started
                self._detach_vmic()

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
