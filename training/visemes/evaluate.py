"""Score trained estimator weights on the held-out voices (flite, festival), as the benchmark does; or, with
--validation, choose the Lite engine's closure thresholds on the validation voices (never the benchmark's).

Run: .venv/bin/python training/visemes/evaluate.py [--weights avatar_cam/lipsync/visemes.npz] [--smoothing 0]
Prints the scores per voice and over all voices (about 30 s here: the synthesizers dominate).
     .venv/bin/python training/visemes/evaluate.py --validation
Prints, per candidate `lite.CLOSE_AT`, the drawn closure recall and false closures (open vowels drawn closed)
on train.py's validation voices (the espeak-ng voices make_data.py never uses, and the festival voice
train.py holds out), frame by frame at 30 fps through the Lite engine's `MouthDriver` (no voice gate).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from avatar_cam.bench.visemes import HELD_OUT_VOICES, estimator_closed, frames_of, held_out_speech, score
from avatar_cam.lipsync import lite
from avatar_cam.lipsync.phonemes import CLOSED, OPEN, Segment, labels_at
from avatar_cam.lipsync.visemes import WEIGHTS, VisemeEstimator
from avatar_cam.live.mel_windows import mel_window

HERE = Path(__file__).resolve().parent
CANDIDATES = ((0.4, 0.7), (0.35, 0.65), (0.3, 0.6), (0.25, 0.55), (0.2, 0.5))


def _clip(mel: np.ndarray, segs: np.ndarray):
    """One utterance as the pipeline's frames at 30 fps: windows, true shape and vowel flag per frame."""
    seg_list = [Segment(a, b, int(s), "", bool(c)) for a, b, s, c in segs]
    n = int(mel.shape[1] / 80 * 30) - 6
    wins = np.stack([mel_window(mel, math.floor(80 * (k / 30 + 0.16) + 1e-9) - 16) for k in range(n)])[:, None]
    shape, _, vowel = labels_at(seg_list, np.arange(n) / 30)
    return wins.astype(np.float32), shape, vowel


def validation(ests: dict[str, VisemeEstimator], utterances: int = 60, seed: int = 15, festival: Path = HERE / "data" / "festival.npz",
               held_out: tuple[str, ...] = ("upc_ca_ona_hts",), sweep: bool = True) -> None:
    sys.path.insert(0, str(HERE))
    from make_data import HELD_OUT, utterance

    sets = {"espeak-ng validation voices": []}
    for i in range(utterances):  # the same utterances as train.py's validation
        _, mels, segs, _ = utterance(10_000_000 + i, seed, sorted(HELD_OUT))
        sets["espeak-ng validation voices"] += [_clip(m, segs) for m in mels]
    if festival.exists():  # the festival voices train.py holds out (--hold-out)
        with np.load(festival) as z:
            mel, lengths, segs, seg_utt, voices = (z[k] for k in ("mel", "lengths", "segments", "segment_utt", "voice"))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        first = np.searchsorted(seg_utt, np.arange(len(lengths) + 1))
        mine = [u for u, v in enumerate(voices) if str(v).split(" ")[0] in held_out][: 2 * utterances]
        sets["festival " + " ".join(held_out)] = [
            _clip(mel[:, offsets[u] : offsets[u + 1]].astype(np.float32), segs[first[u] : first[u + 1]]) for u in mine]
    saved = lite.CLOSE_AT
    try:
        for label, est in ests.items():
            print(label)
            for name, clips in sets.items():
                print(" ", name)
                _shapes(est, clips)
                if sweep:
                    _sweep(est, clips)
    finally:
        lite.CLOSE_AT = saved


def _shapes(est: VisemeEstimator, clips) -> None:
    """The estimator's own scores on the clips, as the benchmark reports them (frame accuracy, rounded vs spread)."""
    probs, truth = [], []
    for wins, s, v in clips:
        est.reset()
        probs.append(est.probabilities(wins))
        truth.append(SimpleNamespace(shape=s, vowel=v))
    p = np.concatenate(probs)
    s = score(p, estimator_closed(p), truth)
    print(f"    estimator: frame accuracy {s.frame_accuracy:.4f}, rounded vs spread {s.rounded_vs_spread:.4f}, "
          f"closed recall {s.closure_recall:.4f}, false closures {s.false_closures:.4f} ({s.frames} frames)")


def _sweep(est: VisemeEstimator, clips) -> None:
    for close_at in CANDIDATES:
        lite.CLOSE_AT = close_at
        driver = lite.MouthDriver(estimator=est)
        opening, shape, vowel = [], [], []
        for wins, s, v in clips:
            driver.reset()
            opening.append(driver.shapes(wins)[:, 0])
            shape.append(s)
            vowel.append(v)
        closed, shape, vowel = np.concatenate(opening) < 0.1, np.concatenate(shape), np.concatenate(vowel)
        print(f"    CLOSE_AT {close_at}: closure recall {closed[shape == CLOSED].mean():.3f}, "
              f"false closures {closed[vowel & (shape == OPEN)].mean():.3f}, any vowel {closed[vowel].mean():.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, nargs="+", default=[WEIGHTS], help="several: --validation scores each")
    ap.add_argument("--smoothing", type=float, nargs="+", default=[0.0], help="several: --validation scores each")
    ap.add_argument("--validation", action="store_true", help="choose closure thresholds on the validation voices")
    ap.add_argument("--no-sweep", action="store_true", help="--validation: the estimator's scores only")
    ap.add_argument("--festival", type=Path, default=HERE / "data" / "festival.npz",
                    help="--validation: the make_data.py file holding the held-out festival voice")
    args = ap.parse_args(argv)
    if args.validation:
        ests = {f"{w} smoothing {a}": VisemeEstimator.load(w, smoothing=a) for w in args.weights for a in args.smoothing}
        validation(ests, festival=args.festival, sweep=not args.no_sweep)
        return 0
    est = VisemeEstimator.load(args.weights[0], smoothing=args.smoothing[0])
    every, probs_all = [], []
    for voice in HELD_OUT_VOICES:
        clips = [frames_of(s) for s in held_out_speech([voice])]
        probs = []
        for c in clips:
            est.reset()
            probs.append(est.probabilities(c.mels))
        p = np.concatenate(probs)
        s = score(p, estimator_closed(p), clips)
        print(" ".join(voice), json.dumps(s.as_dict()))
        every += clips
        probs_all.append(p)
    p = np.concatenate(probs_all)
    print("ALL", json.dumps(score(p, estimator_closed(p), every).as_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
