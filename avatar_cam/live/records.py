"""What every frame showed and when (`FrameRecord`), a bounded list of them, and the figures a run sums up to.

Records are written by the thread that emits frames (the frame thread, or the sender thread when frames are
paced) and read by others (status, benches) as whole objects; the list is trimmed, never rewritten in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)  # slots: up to `PipelineStats.keep` of these live at once in a long call
class FrameRecord:
    """What every emitted frame showed and when: the raw material of latency and sync measurements."""

    index: int  # frame index on the audio clock (-1 for a keep-alive idle frame with no audio)
    audio_time: float  # audio-clock seconds the frame shows
    heard: float | None  # monotonic time that audio reached us (None without audio)
    ready: float  # monotonic time the frame's audio was complete
    emitted: float  # monotonic time the frame left for the sinks
    alpha: float
    inferred: bool  # the frame shows a mouth the engine drew
    drawn: float = 0.0  # monotonic time the frame was ready to leave (before any pacing held it)
    started: float = 0.0  # monotonic time drawing it began
    slot: float = 0.0  # monotonic time it was due to leave: its audio complete, plus the time its mouth may take
    mouth_index: int = -1  # the frame whose mel window drew the mouth shown (-1: no mouth)
    mouth_heard: float | None = None  # monotonic time the sound of that mouth reached us

    @property
    def lateness(self) -> float | None:
        """How long after its sound was heard this frame could have left, had the frame thread been free:
        its slot, plus drawing. Unlike `latency` it does not grow while pacing holds frames."""
        if self.heard is None:
            return None
        return max(self.slot, self.ready) + (self.drawn - self.started) - self.heard

    @property
    def latency(self) -> float | None:
        """From the sound reaching the microphone to the frame that shows it leaving, in seconds: the sound of
        the mouth shown, for a talking frame."""
        heard = self.mouth_heard if self.mouth_heard is not None else self.heard
        return None if heard is None else self.emitted - heard

    @property
    def late(self) -> float:
        """Seconds this frame left after its slot."""
        return self.emitted - max(self.slot, self.ready)


@dataclass
class PipelineStats:
    records: list[FrameRecord] = field(default_factory=list)
    # Bound memory on long calls: 20k records (~11 min at 30 fps, ~4 MB); the oldest 10 % go when full.
    # Whole-run figures for longer runs are kept by their own meters (see soak.py), not from this list.
    keep: int = 20_000

    def add(self, rec: FrameRecord) -> None:
        self.records.append(rec)
        if len(self.records) > self.keep:
            del self.records[: self.keep // 10]


def summarize(records: list[FrameRecord], fps: float) -> dict:
    """Camera rate, late frames, mouth rate and latency percentiles over a run's frame records.

    Late: left more than a frame period after its slot, or never (a frame index the clock asked for that no
    record has). Mouth rate: new mouths per second of talking. Latency: from a sound to the first frame that shows
    the mouth drawn from it (for runs with no talking, from each frame's sound to the frame).
    """
    live = [r for r in records if r.index >= 0]
    if len(live) < 2:
        return {"frames": len(live), "camera_fps": 0.0, "fps": 0.0, "camera_late_pct": 100.0, "late_frames_pct": 100.0,
                "mouth_hz": 0.0, "latency_ms_p50": None, "latency_ms_p95": None, "inferred_pct": 0.0}
    span = live[-1].emitted - live[0].emitted
    expected = live[-1].index - live[0].index + 1
    late = sum(1 for r in live if r.late > 1.0 / fps) + (expected - len(live))
    talking = [r for r in live if r.inferred]
    firsts: dict[int, FrameRecord] = {}
    for r in talking:
        firsts.setdefault(r.mouth_index, r)
    shown = firsts.values() if firsts else live
    lat = np.array([r.latency for r in shown if r.latency is not None]) * 1000.0
    camera_fps = round((len(live) - 1) / span, 2) if span > 0 else 0.0
    late_pct = round(100.0 * late / expected, 2)
    return {
        "frames": len(live),
        "camera_fps": camera_fps,
        "fps": camera_fps,  # older name, kept for scripts
        "camera_late_pct": late_pct,
        "late_frames_pct": late_pct,  # older name, kept for scripts
        "mouth_hz": round(len(firsts) * fps / len(talking), 1) if talking else 0.0,
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
        "inferred_pct": round(100.0 * len(talking) / len(live), 1),
    }
