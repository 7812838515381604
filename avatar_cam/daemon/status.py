"""What the daemon is doing, as the tray's status line, `ctl status` and its JSON show it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Status:
    state: str  # "stopped" | "standby" (no app reads the camera) | "live" | "silent" | "paused" | "error"
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
    mouth_hz: float | None = None  # new mouths per second while talking (None: nobody talked lately)
    performance: str = "balanced"  # the performance mode in use
    lips: str | None = None  # what the mouth rate means, e.g. "lips at 12 Hz: the machine is busy"
    notice: str | None = None  # something the user should know while the camera runs (e.g. a size that waits)
    camera_priority: str | None = None  # how the frame thread keeps time: "real-time (rtkit)", ..., "normal"

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One line for the tray's status item."""
        if self.state == "error":
            return f"Error: {self.error}"
        if self.state == "stopped":
            return "Camera off"
        if self.state == "standby":
            return "Ready: no app is using the camera"
        lat = f", {self.latency_ms_p95:.0f} ms" if self.latency_ms_p95 is not None else ""
        lips = f", {self.lips}" if self.lips else ""
        notice = f" ({self.notice})" if self.notice else ""
        return f"{self.state.capitalize()}: {self.fps:.0f} fps{lat}{lips}{notice}"


def lips_text(mouth_hz: float | None, target_hz: float | None) -> str | None:
    """What the mouth rate means for the user: None in silence; a note when the machine holds it down."""
    if mouth_hz is None:
        return None
    if target_hz and mouth_hz < 0.8 * target_hz:
        return f"lips at {mouth_hz:.0f} Hz: the machine is busy"
    return f"lips at {mouth_hz:.0f} Hz"


def mouth_rate(records: list, fps: float, now: float | None = None, window_s: float = 3.0) -> float | None:
    """New mouths per second of talking over the last `window_s` of `records` (None: too little talking)."""
    now = time.monotonic() if now is None else now
    talking = [r for r in records[-int(window_s * fps) - 5:] if now - r.emitted < window_s and r.inferred]
    if len(talking) < fps / 2:
        return None
    return len({r.mouth_index for r in talking}) * fps / len(talking)


def recent_figures(records: list, now: float | None = None) -> tuple[float, float | None, bool]:
    """(fps, mouth latency p95 in ms, someone talking) over the frames of the last 3 s of `records`."""
    now = time.monotonic() if now is None else now
    recent = [r for r in records[-90:] if now - r.emitted < 3.0]
    fps, p95 = 0.0, None
    if len(recent) > 1:
        span = recent[-1].emitted - recent[0].emitted
        fps = (len(recent) - 1) / span if span > 0 else 0.0
        lat = [r.latency for r in recent if r.latency is not None]
        p95 = float(np.percentile(lat, 95)) * 1000 if lat else None
    return fps, p95, any(r.alpha > 0 for r in recent[-15:])
