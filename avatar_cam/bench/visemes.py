"""`avatar-cam bench visemes`: how well the Lite engine's mouth shapes follow speech, on voices its estimator
never trained on, and what the Lite engine costs per frame.

The speech is synthetic with known phoneme timing: the flite and festival voices of HELD_OUT_VOICES (the
estimator trains on espeak-ng and on other festival voices, never on these: `training/visemes/make_data.py`
refuses them; flite is not used in training at all). Each clip is drawn by the product's own renderer (the astronaut, 1280x720, 30 fps, voice gate
included); per frame the true shape comes from `lipsync.phonemes`. The numbers (issue 15):
- frame accuracy: the estimator's most likely shape is the true one (all frames, speech frames, per shape);
- closure recall: frames inside m/b/p whose drawn mouth is closed (lip gap under a tenth of its widest);
  false closures: frames inside open vowels (a-like; not coarticulated consonants) whose drawn mouth is closed
  (and, stricter, closed in any vowel);
- rounded vs spread: among frames whose true shape is rounded or spread, the share where the estimator
  finds the rounder of the two correctly;
- lips pressed: frames inside m/b/p where the lips are pressed together (closure >= 0.5: they cover teeth
  the photo shows; a closed-mouth photo needs only the zero gap);
- the Lite engine's ms per frame at 1280x720 (its mouth shapes, including the estimator, and its drawing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatar_cam.audio.mel import melspectrogram
from avatar_cam.lipsync.lite import LiteLipSync
from avatar_cam.lipsync.phonemes import CLOSED, OPEN, REST, ROUNDED, SPREAD, labels_at, segments
from avatar_cam.lipsync.synthetic_speech import Speech, festival_speech, flite_speech
from avatar_cam.lipsync.visemes import SHAPES, WEIGHTS, VisemeEstimator
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.mel_windows import mel_window

# Written for this benchmark: many closures, rounded and spread vowels, and ordinary running speech.
SENTENCES = (
    "Bob may buy my mother a map of Peru.",
    "Who knew you would choose the blue shoes too?",
    "Please keep the green sheep in the field, Steve.",
    "Father's car is parked in the dark yard.",
    "Move over, Mabel; the boat won't float in this pool.",
    "We need to meet at three, it is easy to see.",
    "Paul bought a warm coat for the whole family.",
    "My puppy ate both of my pumpkin pies.",
    "Five brave people waved from the very top.",
    "Look, the moon is full and the room is cool.",
    "Maybe Emma will bring some bread and butter home.",
    "Every evening the river runs past the old mill.",
)
HELD_OUT_VOICES = (("flite", "slt"), ("flite", "rms"), ("flite", "awb"), ("flite", "kal16"),
                   ("festival", "kal_diphone"), ("festival", "cmu_us_slt_arctic_hts"))


def held_out_speech(voices=HELD_OUT_VOICES, sentences=SENTENCES) -> list[Speech]:
    make = {"flite": flite_speech, "festival": festival_speech}
    return [make[synth](text, voice) for synth, voice in voices for text in sentences]


@dataclass
class Frames:
    """One clip cut into frames the way the pipeline does: windows (N,1,80,16) and the truth per frame."""

    mels: np.ndarray
    audio: np.ndarray
    shape: np.ndarray
    coarticulated: np.ndarray
    vowel: np.ndarray
    voice: str = ""


def frames_of(speech: Speech, fps: float = 30.0, lead_s: float = 0.3) -> Frames:
    """Frame k shows time k/fps of the speech with `lead_s` of silence put before and after it."""
    clock = FrameClock(fps=fps)
    pad = np.zeros(int(lead_s * 16000), np.float32)
    audio = np.concatenate([pad, speech.audio, pad])
    mel = melspectrogram(audio)
    n = clock.frame_count(len(audio) / 16000)
    mels = np.stack([mel_window(mel, clock.mel_start(k)) for k in range(n)])[:, None]
    shape, coart, vowel = labels_at(segments(speech), np.arange(n) / fps - lead_s)
    return Frames(mels, audio, shape, coart, vowel, speech.voice)


@dataclass
class Scores:
    frames: int
    frame_accuracy: float
    speech_frame_accuracy: float
    closure_recall: float
    false_closures: float
    closed_in_vowels: float
    rounded_vs_spread: float
    per_shape: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()} | {
            "per_shape": {k: round(v, 4) for k, v in self.per_shape.items()}}


def score(probs: np.ndarray, closed: np.ndarray, clips: list[Frames]) -> Scores:
    """probs (N,K) and closed (N,) bool for the frames of `clips`, concatenated in order."""
    shape = np.concatenate([c.shape for c in clips])
    vowel = np.concatenate([c.vowel for c in clips])
    pred = probs.argmax(1)
    speech = shape != REST
    bilabial = shape == CLOSED
    rs = (shape == ROUNDED) | (shape == SPREAD)
    rounder = np.where(probs[:, ROUNDED] >= probs[:, SPREAD], ROUNDED, SPREAD)
    per = {s: float((pred[shape == i] == i).mean()) for i, s in enumerate(SHAPES) if (shape == i).any()}
    return Scores(
        frames=len(shape),
        frame_accuracy=float((pred == shape).mean()),
        speech_frame_accuracy=float((pred[speech] == shape[speech]).mean()),
        closure_recall=float(closed[bilabial].mean()),
        false_closures=float(closed[vowel & (shape == OPEN)].mean()),
        closed_in_vowels=float(closed[vowel].mean()),
        rounded_vs_spread=float((rounder[rs] == shape[rs]).mean()),
        per_shape=per,
    )


def estimator_closed(probs: np.ndarray) -> np.ndarray:
    """The estimator's own closed-mouth decision: closed or rest more likely than not."""
    return probs[:, CLOSED] + probs[:, REST] > 0.5


CLOSED_BELOW = 0.1  # a drawn opening under this (of the widest lip gap) is a closed mouth


class _TimedLite(LiteLipSync):
    """The Lite engine as the renderer uses it, noting the opening it draws per frame and its time."""

    def __init__(self):
        super().__init__()
        # Shapes run on the renderer's mouth thread, drawing on its draw thread: each adds to its own sum.
        self.shape_seconds = self.draw_seconds = 0.0
        self.frames = 0
        # (opening, closure) of every paint, in frame order (one draw thread paints the talking frames in order).
        self.painted: deque[tuple[float, float]] = deque()

    def mouth_shapes(self, mels: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = super().mouth_shapes(mels)
        self.shape_seconds += time.perf_counter() - t0
        self.frames += len(out)
        return out

    def canvas_painter(self, canvas: np.ndarray, layout):
        painter = super().canvas_painter(canvas, layout)
        draw = painter.paint

        def paint(img, opening, width=0.0, closure=0.0, teeth=0.0):
            t0 = time.perf_counter()
            draw(img, opening, width, closure, teeth)
            self.draw_seconds += time.perf_counter() - t0
            self.painted.append((opening, closure))

        painter.paint = paint
        return painter

    def drawn(self, info) -> tuple[float, float]:
        """(opening, closure) drawn on the frame of `info` ((0, 0): the photo as it is). Call for every frame the
        renderer yields, in order: a talking frame's paint happened before the frame was handed over."""
        return self.painted.popleft() if info.inferred and info.alpha > 0.0 else (0.0, 0.0)


def drawn_openings(clip: Frames, portrait, size: tuple[int, int] = (1280, 720)) -> tuple[np.ndarray, _TimedLite]:
    """Render the clip with the product's renderer and the Lite engine; (opening, closure) drawn per frame."""
    from avatar_cam.live.assemble import Picture, build_renderer
    from avatar_cam.video.compositor import OutputFormat
    from avatar_cam.video.idle_motion import IdleSettings

    lite = _TimedLite()
    renderer = build_renderer(portrait, Picture(fmt=OutputFormat(*size), idle=IdleSettings.off()), lite)
    openings = []
    for _frame, info in renderer.render_clip(melspectrogram(clip.audio), clip.audio):
        openings.append(lite.drawn(info))
    if lite.painted:
        raise RuntimeError(f"{len(lite.painted)} paints not matched to a frame")
    return np.array(openings), lite


def visemes_bench(voices=HELD_OUT_VOICES, sentences: int = len(SENTENCES), photo: Path | None = None) -> dict:
    from avatar_cam.bench.common import bench_photo
    from avatar_cam.live.assemble import load_portrait

    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp:
        portrait = load_portrait(bench_photo(photo, Path(tmp)))
    est = VisemeEstimator.load()
    all_clips, all_probs, all_open, per_voice, bilabial = [], [], [], {}, []
    lite_s, lite_frames, est_s, est_frames = 0.0, 0, 0.0, 0
    for voice in voices:
        clips = [frames_of(s) for s in held_out_speech([voice], SENTENCES[:sentences])]
        probs, opens = [], []
        for c in clips:
            est.reset()
            t0 = time.perf_counter()
            probs.append(np.concatenate([est.probabilities(m[None]) for m in c.mels]))
            est_s, est_frames = est_s + time.perf_counter() - t0, est_frames + len(c.mels)
            o, lite = drawn_openings(c, portrait)
            opens.append(o)
            bilabial.append(o[c.shape == CLOSED, 1])
            lite_s, lite_frames = lite_s + lite.shape_seconds + lite.draw_seconds, lite_frames + lite.frames
        p, o = np.concatenate(probs), np.concatenate(opens)[:, 0]
        per_voice[" ".join(voice)] = score(p, o < CLOSED_BELOW, clips).as_dict()
        all_clips += clips
        all_probs.append(p)
        all_open.append(o)
    p, o = np.concatenate(all_probs), np.concatenate(all_open)
    return {
        "held_out_voices": [" ".join(v) for v in voices],
        "sentences": sentences,
        "all": score(p, o < CLOSED_BELOW, all_clips).as_dict(),
        "per_voice": per_voice,
        "lips_pressed_in_mbp": round(float(np.mean(np.concatenate(bilabial) >= 0.5)), 4),
        "estimator_ms_per_frame": round(1000 * est_s / max(est_frames, 1), 3),
        "lite_ms_per_talking_frame_1280x720": round(1000 * lite_s / max(lite_frames, 1), 3),
        "model_bytes": WEIGHTS.stat().st_size,
    }


def describe(r: dict) -> None:
    a = r["all"]
    print(f"mouth shapes on {len(r['held_out_voices'])} held-out voices x {r['sentences']} sentences, {a['frames']} frames")
    print(f"  frame accuracy {a['frame_accuracy']:.1%} (speech frames {a['speech_frame_accuracy']:.1%})")
    print(f"  closure recall {a['closure_recall']:.1%}, false closures {a['false_closures']:.1%}, "
          f"(closed in any vowel {a['closed_in_vowels']:.1%}), rounded vs spread {a['rounded_vs_spread']:.1%}")
    print(f"  lips pressed together (covering teeth the photo shows) in {r['lips_pressed_in_mbp']:.1%} of m/b/p frames")
    print("  per shape: " + ", ".join(f"{k} {v:.0%}" for k, v in a["per_shape"].items()))
    for voice, s in r["per_voice"].items():
        print(f"  {voice}: accuracy {s['frame_accuracy']:.1%}, closure recall {s['closure_recall']:.1%}, "
              f"false closures {s['false_closures']:.1%}, rounded vs spread {s['rounded_vs_spread']:.1%}")
    print(f"  estimator {r['estimator_ms_per_frame']} ms/frame; Lite engine {r['lite_ms_per_talking_frame_1280x720']} "
          f"ms per talking frame at 1280x720; model {r['model_bytes'] / 1024:.0f} KiB")


def run(args: argparse.Namespace) -> int:
    from avatar_cam.bench.common import answer

    voices = HELD_OUT_VOICES if not args.voices else tuple(tuple(v.split(":", 1)) for v in args.voices)
    return answer(args, visemes_bench(voices, args.sentences, args.photo), describe)


def register(kinds: argparse._SubParsersAction) -> None:
    b = kinds.add_parser("visemes", help="mouth shapes on held-out voices (flite, festival) and the Lite engine's cost")
    b.add_argument("--voices", nargs="+", metavar="SYNTH:VOICE",
                   help="e.g. flite:slt festival:kal_diphone (default: " + " ".join(":".join(v) for v in HELD_OUT_VOICES) + ")")
    b.add_argument("--sentences", type=int, default=len(SENTENCES), help="sentences per voice (default all)")
    b.add_argument("--photo", type=Path, help="portrait (default: scikit-image's astronaut)")
    b.add_argument("--json", action="store_true", help="print JSON instead of text")
    b.set_defaults(func=run)
