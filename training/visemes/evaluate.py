"""Score trained estimator weights on the held-out voices (flite, festival), as the benchmark does.

Run: .venv/bin/python training/visemes/evaluate.py [--weights avatar_cam/lipsync/visemes.npz] [--smoothing 0]
Prints the scores per voice and over all voices (about 30 s here: the synthesizers dominate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from avatar_cam.bench.visemes import HELD_OUT_VOICES, estimator_closed, frames_of, held_out_speech, score
from avatar_cam.lipsync.visemes import WEIGHTS, VisemeEstimator


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--smoothing", type=float, default=0.0)
    args = ap.parse_args(argv)
    est = VisemeEstimator.load(args.weights, smoothing=args.smoothing)
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
