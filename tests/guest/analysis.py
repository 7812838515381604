"""What the guest's report says, as a call app's user would put it: which devices Chromium listed, whether the
portrait arrived, whether the mouth moved with the voice and rested in silence, how far the mouth trailed the
voice, what a photo switch, a pause and a restart at another size did to the track, and what ffmpeg saw.

All times are epoch milliseconds on the guest's clock, as the page stamped what it received.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass

MOUTH_OPEN = 2.0  # mean |difference| (0-255) inside the mouth box above which the mouth counts as moved
OUTSIDE_SAME = 6.0  # mean |difference| outside the box below which a frame counts as the photo's still frame
VOICE_FRACTION = 0.08  # an audio block is voice above this fraction of the loudest block
VOICE_GAP_MS = 800  # silence before a voice onset
ONSET_SEARCH_MS = (-1000, 2500)  # where a mouth opening is looked for around a voice onset
PATH_SEARCH_MS = 4000  # how long after the voice reached the microphone Chromium's hearing/seeing it is looked for


@dataclass
class Window:
    start: float
    end: float

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


def marks(report: dict) -> dict[str, float]:
    """The first time of each scenario mark."""
    found: dict[str, float] = {}
    for m in report.get("timeline", []):
        found.setdefault(m["what"], m["t"])
    return found


def photo_at(t: float, report: dict, names: list[str]) -> str:
    switched = marks(report).get("ctl photo answered")
    return names[1] if switched is not None and t >= switched else names[0]


def mouth_of(sample: dict, photo: str) -> float | None:
    ref = sample["refs"].get(photo)
    return ref["mouth"] if ref else None


def voice_blocks(audio: list[dict]) -> tuple[list[tuple[float, bool]], float]:
    if not audio:
        return [], 0.0
    loudest = max(a["rms"] for a in audio)
    threshold = loudest * VOICE_FRACTION
    return [(a["t"], a["rms"] > threshold) for a in audio], threshold


def voice_onsets(blocks: list[tuple[float, bool]]) -> list[float]:
    onsets, last_voice = [], None
    for t, voiced in blocks:
        if voiced:
            if last_voice is None or t - last_voice > VOICE_GAP_MS:
                onsets.append(t)
            last_voice = t
    return onsets


def voiced_at(blocks: list[tuple[float, bool]], t: float, margin_ms: float = 150) -> bool | None:
    """True in voice, False well inside silence, None near an edge or where nothing was heard."""
    near = [v for bt, v in blocks if abs(bt - t) <= margin_ms]
    if not near:
        return None
    return True if all(near) else False if not any(near) else None


def mouth_openings(video: list[dict], names: list[str], report: dict, window: Window) -> list[tuple[float, float]]:
    out = []
    for s in video:
        if window.holds(s["t"]):
            m = mouth_of(s, photo_at(s["t"], report, names))
            if m is not None:
                out.append((s["t"], m))
    return out


def onset_lags(onsets: list[float], mouths: list[tuple[float, float]]) -> list[float]:
    """For each voice onset, ms until the first frame with the mouth moved (negative: before the voice)."""
    lags = []
    for onset in onsets:
        lo, hi = onset + ONSET_SEARCH_MS[0], onset + ONSET_SEARCH_MS[1]
        # Start from a closed mouth: skip frames still open from an earlier phrase.
        closed = [t for t, m in mouths if lo <= t <= onset and m <= MOUTH_OPEN]
        start = closed[-1] if closed else lo
        opened = next((t for t, m in mouths if start < t <= hi and m > MOUTH_OPEN), None)
        if opened is not None:
            lags.append(round(opened - onset, 1))
    return lags


def share(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def phrases(blocks: list[tuple[float, bool]]) -> list[Window]:
    """Where the voice spoke: voiced blocks, words less than VOICE_GAP_MS apart joined into one phrase."""
    spans: list[Window] = []
    for t, voiced in blocks:
        if not voiced:
            continue
        if spans and t - spans[-1].end <= VOICE_GAP_MS:
            spans[-1].end = t
        else:
            spans.append(Window(t, t))
    return spans


def frame_period(video: list[dict]) -> float:
    """The camera's frame period as the page received it (ms)."""
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(video)]
    return statistics.median(gaps) if gaps else 0.0


def speech_checks(blocks: list[tuple[float, bool]], mouths: list[tuple[float, float]], period: float) -> dict:
    """Per phrase, how the mouth moved while it was heard (give or take a frame: the product keeps lips within a
    frame of the voice), and whether it rested in silence (frames more than a frame away from any voice).

    At the guest's few frames a second each frame samples one moment of speech, and speech closes the mouth
    often (m, b, p, pauses between words): a phrase's widest opening says whether the face spoke with it."""
    spoken = phrases(blocks)
    out = []
    for p in spoken:
        near = [m for t, m in mouths if p.start - period <= t <= p.end + period]
        out.append({"start": p.start, "ms": round(p.end - p.start), "frames": len(near),
                    "widest": round(max(near), 2) if near else None,
                    "moved": share([m > MOUTH_OPEN for m in near])})
    in_silence = [m > MOUTH_OPEN for t, m in mouths
                  if voiced_at(blocks, t) is False
                  and all(not (p.start - period - 150 <= t <= p.end + period + 150) for p in spoken)]
    return {"phrases": out, "frames_in_silence": len(in_silence), "mouth_moved_in_silence": share(in_silence)}


def talking_checks(report: dict, names: list[str]) -> dict:
    page, m = report["page"], marks(report)
    window = Window(m.get("silence ends", 0) - 2500, m.get("ctl photo", float("inf")))
    heard = [a for a in page["audio"] if window.holds(a["t"])]
    blocks, threshold = voice_blocks(heard)
    mouths = mouth_openings(page["video"], names, report, window)
    onsets = voice_onsets(blocks)
    lags = onset_lags(onsets, mouths)
    period = frame_period(page["video"])
    return {"loudest_rms": round(max((a["rms"] for a in heard), default=0.0), 4),
            "voiced_s": round(sum(a["seconds"] for a, (_, voiced) in zip(heard, blocks, strict=True) if voiced), 2),
            "voice_threshold_rms": threshold, "frames": len(mouths), "frame_period_ms": period,
            **speech_checks(blocks, mouths, period),
            "voice_onsets": len(onsets), "onset_to_mouth_ms": lags,
            "median_onset_to_mouth_ms": statistics.median(lags) if lags else None}


def portrait_checks(report: dict, names: list[str]) -> dict:
    page, m = report["page"], marks(report)
    out = {}
    for label, window in (("before_switch", Window(0, m.get("ctl photo", float("inf")))),
                          ("after_switch", Window(m.get("ctl photo answered", float("inf")) + 1000,
                                                  m.get("ctl quit", float("inf"))))):
        samples = [s for s in page["video"] if window.holds(s["t"]) and s["refs"]]
        if not samples:
            out[label] = None
            continue
        shown = photo_at(samples[0]["t"], report, names)
        other = names[1] if shown == names[0] else names[0]
        out[label] = {"photo": shown, "frames": len(samples), "sizes": sorted({f"{s['w']}x{s['h']}" for s in samples}),
                      "outside_mouth_diff_median": statistics.median(s["refs"][shown]["outside"] for s in samples),
                      "outside_mouth_diff_vs_other_photo": statistics.median(s["refs"][other]["outside"] for s in samples),
                      "frame_std_median": statistics.median(s["std"] for s in samples),
                      "frame_mean_median": statistics.median(s["mean"] for s in samples)}
    return out


def own_voice(window: Window, at_mic: list[float]) -> Window:
    """`window` from the moment the step's own voice reached the microphone: Chromium can neither hear nor see it
    before then. What Chromium receives earlier in the window is an earlier step's, arriving late: under emulation
    its audio and video stall for seconds and then catch up (a phrase heard 11 s late, after 3 s of silence, once)."""
    first = next((t for t in at_mic if window.holds(t)), None)
    return window if first is None else Window(max(window.start, first), window.end)


def pause_checks(report: dict, names: list[str]) -> dict:
    page, m = report["page"], marks(report)
    at_mic = voice_onsets(voice_blocks([{"t": t, "rms": rms} for t, rms in report.get("probe", [])])[0])
    paused = own_voice(Window(m.get("ctl pause answered", float("inf")), m.get("ctl resume", float("inf"))), at_mic)
    resumed = own_voice(Window(m.get("ctl resume answered", float("inf")), m.get("ctl quit", float("inf"))), at_mic)
    result, period = {}, frame_period(page["video"])
    for label, window in (("paused", paused), ("resumed", resumed)):
        blocks, _ = voice_blocks([a for a in page["audio"] if window.holds(a["t"])])
        mouths = mouth_openings(page["video"], names, report, window)
        result[label] = {"frames": len(mouths), **speech_checks(blocks, mouths, period)}
    return result


def track_events(report: dict) -> list[dict]:
    return [{"t": e["t"], "what": e["what"], "detail": e["detail"]} for e in report["page"]["events"]
            if e["what"] in ("ended", "mute", "unmute", "size")]


def restart_checks(report: dict) -> dict:
    m = marks(report)
    quit_at = m.get("ctl quit", float("inf"))
    after = [s for s in report["page"]["video"] if s["t"] > quit_at]
    events = [e for e in track_events(report) if e["t"] > quit_at]
    return {"events_after_quit": events, "frames_after_quit": len(after),
            "sizes_after_quit": sorted({f"{s['w']}x{s['h']}" for s in after}),
            "frames_after_restart": len([s for s in after if s["t"] > m.get("daemon running", 0) and s["t"] > quit_at]),
            "last_track_state": report["page"].get("last")}


def voice_path(report: dict, names: list[str]) -> dict:
    """When each phrase reached the microphone (the voice probe, a plain client beside the daemon), and how much later
    Chromium heard it from Avatar Cam Microphone and saw the mouth open: the product's whole delay, end to end
    (None: not within PATH_SEARCH_MS; phrases are ~4.5 s apart)."""
    probe = [{"t": t, "rms": rms} for t, rms in report.get("probe", [])]
    at_mic = voice_onsets(voice_blocks(probe)[0])
    heard = voice_onsets(voice_blocks(report["page"]["audio"])[0])
    mouths = mouth_openings(report["page"]["video"], names, report, Window(0, float("inf")))
    opened = [t for t, m in mouths if m > MOUTH_OPEN]
    out = []
    for onset in at_mic:
        chromium = next((t for t in heard if onset - 200 <= t <= onset + PATH_SEARCH_MS), None)
        mouth = next((t for t in opened if onset - 200 <= t <= onset + PATH_SEARCH_MS), None)
        out.append({"at_mic": onset, "heard_ms": None if chromium is None else round(chromium - onset),
                    "mouth_ms": None if mouth is None else round(mouth - onset)})
    heard_ms = [o["heard_ms"] for o in out if o["heard_ms"] is not None]
    mouth_ms = [o["mouth_ms"] for o in out if o["mouth_ms"] is not None]
    return {"phrases": out, "median_heard_ms": statistics.median(heard_ms) if heard_ms else None,
            "median_mouth_ms": statistics.median(mouth_ms) if mouth_ms else None}


def devices_listed(report: dict) -> dict:
    opened = next((e["detail"] for e in report["page"]["events"] if e["what"] == "opened"), None)
    if opened is None:
        return {"opened": False, "fatal": report["page"].get("fatal")}
    labels = [(d["kind"], d["label"]) for d in opened["listed"]]
    return {"opened": True, "listed": labels, "tracks": opened["tracks"]}


def summarize(report: dict) -> dict:
    names = [r["name"] for r in report["job"]["references"]][::2]  # one name per photo, in job order
    ended_before_quit = [e for e in track_events(report)
                         if e["what"] == "ended" and e["t"] < marks(report).get("ctl quit", float("inf"))]
    return {"devices": devices_listed(report), "portrait": portrait_checks(report, names),
            "talking": talking_checks(report, names), "pause": pause_checks(report, names),
            "voice_path": voice_path(report, names),
            "ended_before_restart": ended_before_quit, "restart_at_new_size": restart_checks(report),
            "track_events": track_events(report), "frames_received": len(report["page"]["video"]),
            "audio_blocks_received": len(report["page"]["audio"])}
