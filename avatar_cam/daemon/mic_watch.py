"""The controller's microphone side: switching microphones, and the watchdog's supervision of the open one.

A microphone that errors, or stops delivering sound, is reopened (after `MIC_RETRY_S`, then backing off)
while the camera keeps showing the idle face; a chosen microphone that this process's PortAudio does not list (plugged in after it
started) is looked for among the devices there are now. `Controller` inherits these methods: they share its
lock and state (`_ring`, `_mic`, `_mic_fault`...). `_lost_mic` and `_reopen_mic` run on the "health" thread;
`set_mic` on the caller's.
"""

from __future__ import annotations

import logging
import threading
import time

from avatar_cam.daemon.status import Status
from avatar_cam.errors import AvatarCamError

log = logging.getLogger(__name__)


class MicrophoneWatch:
    MIC_RETRY_S = 0.75  # first wait between reopen attempts of a lost microphone; doubles per failed attempt
    MIC_RETRY_MAX_S = 12.0  # ... up to this (a starved CPU must not turn reopening into a storm)
    MIC_STALL_S = 1.0  # a "running" microphone that delivers nothing for this long (while we ran) is lost
    MIC_OPEN_GRACE_S = 3.0  # a freshly opened stream may take this long to deliver (PulseAudio after a restart: ~2 s)
    MIC_SEARCH_S = 3.0  # between looks for a chosen microphone this process's PortAudio does not list
    # Sound must flow this long after a reopen before a new loss starts the back-off again from MIC_RETRY_S: on a
    # starved CPU a reopened stream delivers for a few seconds, stalls, and reopening it costs 6-10 s of silence
    # each time (seen in the emulated guest: every ~5 s, the microphone silent half of the time).
    MIC_HEALTHY_S = 30.0
    _mic_back_at: float | None = None  # when sound came back after a loss, until it has flowed MIC_HEALTHY_S
    # The stall clock: seconds of silence from the stream counted only while this process ran (see `_lost_mic`).
    _mic_quiet_s = 0.0
    _mic_looked_at = 0.0
    _mic_backoff_s = MIC_RETRY_S

    def set_mic(self, name: str | None) -> Status:
        """Switch microphone without closing the camera; a device that cannot open raises, the old one stays.

        A name this process's PortAudio does not list may belong to a device plugged in since it started:
        PortAudio then rescans (see `_find_unlisted_mic`) before giving up."""
        from avatar_cam.audio.devices import find_input_device
        from avatar_cam.audio.sources import MicrophoneSource
        from avatar_cam.errors import AudioError

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
                self._mic_opened(time.monotonic(), self._ring.total)
                self._mic_fault, self._mic_backoff_s = None, self.MIC_RETRY_S
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
        from avatar_cam.audio.devices import find_input_device, fresh_input_device_names, names_input_device
        from avatar_cam.errors import AudioError

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
        from avatar_cam.audio.devices import PORTAUDIO_LOCK, rescan_devices

        with PORTAUDIO_LOCK:  # a stream the watchdog opened before this sees the count change and is dropped
            self._rescans += 1
            rescan_devices()

    def _mic_opened(self, now: float, total: int) -> None:
        """A stream was just opened: its stall clock starts (under the lock)."""
        self._mic_opened_at, self._mic_seen, self._mic_quiet_s, self._mic_looked_at = now, (total, now), 0.0, now

    def _ran_since(self, t: float) -> bool:
        """Did this process run since `t`? The frame thread draws at the camera's rate whether or not sound comes
        (the idle face), so a frame drawn since then says it did; none says the CPU was taken from us."""
        pipeline = self._pipeline
        records = pipeline.stats.records if pipeline is not None else None
        if not records:
            return True  # nothing to compare with yet: take the time as it came
        return records[-1].emitted >= t

    def _lost_mic(self, now: float):
        """Under the lock: is the microphone lost (stream error, or nothing from a "running" stream)?

        Silence counts towards a stall only for the time this process itself ran: on a starved CPU (a busy
        machine, an emulator) the watchdog, the stream's thread and the frame thread are all held up together,
        and that is not the microphone's fault. A look that comes late adds at most two looks' worth, and an
        interval in which the frame thread drew nothing adds nothing. Reopen attempts back off: MIC_RETRY_S,
        doubling up to MIC_RETRY_MAX_S, until sound has come back and flowed for MIC_HEALTHY_S.
        Returns (ring, detached old source or None) when it is time to reopen it, else None.
        """
        ring, mic = self._ring, self._mic
        if ring is None:
            return None
        total = ring.total
        since, self._mic_looked_at = self._mic_looked_at, now
        if total != self._mic_seen[0]:
            self._mic_seen, self._mic_quiet_s = (total, now), 0.0
        elif self._ran_since(since):
            self._mic_quiet_s += min(max(now - since, 0.0), 2 * self.WATCH_S)
        if mic is None:
            problem = self._mic_fault or "microphone lost"
        elif mic.status.startswith("error"):
            problem = mic.status.removeprefix("error: ")
        elif self._mic_quiet_s > self.MIC_STALL_S and now - self._mic_opened_at > self.MIC_OPEN_GRACE_S:
            problem = f"no sound from it for {self._mic_quiet_s:.0f} s"
        else:
            if self._mic_fault and self._mic_seen[1] > self._mic_opened_at:
                log.info("the microphone is back")
                self._mic_fault, self._mic_back_at = None, now
            if self._mic_back_at is not None and now - self._mic_back_at >= self.MIC_HEALTHY_S:
                self._mic_backoff_s, self._mic_back_at = self.MIC_RETRY_S, None
            return None
        if not self._mic_fault:  # just lost
            log.warning("microphone lost (%s): reconnecting", problem)
            self._mic_fault = f"microphone lost: reconnecting ({problem})"
        if now < self._mic_retry_at:
            return None
        self._mic_retry_at = now + self._mic_backoff_s
        if self._mic_backoff_s < self.MIC_RETRY_MAX_S:
            log.info("microphone: reopening it; if that fails, the next try in %.1f s", self._mic_backoff_s)
        self._mic_backoff_s = min(2 * self._mic_backoff_s, self.MIC_RETRY_MAX_S)
        self._mic = None
        return ring, mic

    def _reopen_mic(self, stop: threading.Event, ring, old) -> None:
        from avatar_cam.audio.sources import MicrophoneSource
        from avatar_cam.errors import AudioError

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
            self._mic = new
            self._mic_opened(time.monotonic(), ring.total)

    def _search_missing_mic(self) -> None:
        """The chosen microphone, unplugged and plugged in again, may come back under a new ALSA card that
        this process's PortAudio does not list: look for it among the devices there are now, every
        `MIC_SEARCH_S` (in a fresh process while streams are open; see `_find_unlisted_mic`)."""
        now = time.monotonic()
        if self.settings.mic is not None and now >= self._next_mic_search:
            self._next_mic_search = now + self.MIC_SEARCH_S
            self._find_unlisted_mic(self.settings.mic)
