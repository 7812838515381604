"""Train the mouth-shape estimator and write its weights to avatar_cam/lipsync/visemes.npz.

Run (from the repository root, in the project's venv, after make_data.py):
    .venv/bin/python training/visemes/train.py   # data: data/espeak.npz, festival.npz, festival_ked.npz (make_data.py)
The committed weights, an ensemble of four networks (22-25 minutes each here, two side by side), each then
trained 2 short epochs more with the rounded-vs-spread loss (--rs-pair 3; 6-7 minutes each, three side by side):
    D=training/visemes/data
    .venv/bin/python training/visemes/train.py --seed 15 --data $D/espeak.npz $D/festival.npz --out /tmp/s15.npz
    .venv/bin/python training/visemes/train.py --seed 16 --data $D/espeak.npz $D/festival.npz --out /tmp/s16.npz
    .venv/bin/python training/visemes/train.py --seed 15 --out /tmp/k15.npz
    .venv/bin/python training/visemes/train.py --seed 16 --out /tmp/k16.npz
    FT="--rs-pair 3 --epochs 2 --per-epoch 0.15 --lr 5e-4"
    .venv/bin/python training/visemes/train.py --init /tmp/s15.npz --seed 15 $FT --data $D/espeak.npz $D/festival.npz --out /tmp/s15r.npz
    .venv/bin/python training/visemes/train.py --init /tmp/s16.npz --seed 16 $FT --data $D/espeak.npz $D/festival.npz --out /tmp/s16r.npz
    .venv/bin/python training/visemes/train.py --init /tmp/k15.npz --seed 15 $FT --out /tmp/k15r.npz
    .venv/bin/python training/visemes/train.py --init /tmp/k16.npz --seed 16 $FT --out /tmp/k16r.npz
    .venv/bin/python training/visemes/train.py --merge /tmp/s15r.npz /tmp/s16r.npz /tmp/k15r.npz /tmp/k16r.npz
    .venv/bin/python training/visemes/train.py --epochs 2 --out /tmp/v.npz   # a quick look

Input per example: exactly what the pipeline hands the lite engine for a frame at time t, the normalised
80x16 Wav2Lip mel window starting at column floor(80 (t + 0.16)) - 16 (covering [t - 40 ms, t + 160 ms]),
taken at every mel column of every utterance, labelled with the shape at t (avatar_cam.lipsync.phonemes).
Augmentation on the fly: gain (a shift of the normalised mel), vocal tract length (every frequency scaled
by 0.84..1.24: voices higher and lower than espeak-ng's), a smooth random equaliser (--eq-db), +-1 column of
time jitter between window and label; --smear (tried, not used): a share of the examples smoothed across
bands and over time, as statistical-parametric synthesis smooths its spectra.
Model: features (`visemes.features`, gain-independent) -> standardised -> MLP 1281-256-128-7 with ReLU and
dropout, cross-entropy with label smoothing; coarticulated consonant frames weigh half. --rs-pair adds a
second cross-entropy on rounded and spread frames between those two logits alone: the choice `bench visemes`
scores as rounded vs spread. --init starts from a trained network (its standardisation kept). Seeded (torch,
numpy), single-threaded-deterministic on CPU: the same data and seed give the same weights.
Validation: espeak-ng voices make_data.py never uses (HELD_OUT), and the festival voices of --hold-out (kept
out of training); the benchmark's voices (flite's, festival's kal_diphone and slt HTS) are never in the data.
The committed weights are an ensemble of four such networks (`--merge`: the estimator averages their
probabilities): seeds 15 and 16, each without and with festival_ked.npz; chosen on the validation voices over one
network and over either pair (`evaluate.py --validation`); the --rs-pair fine-tuning too (BENCHMARKS.md, session 7).
PyTorch is used here only, never at run time.
Time here: 8.5 minutes for 12 epochs (2.7 M windows) with the machine shared (PyTorch CPU, one thread); with
festival_ked.npz (3.4 M windows), two trainings side by side on 2 vCPU: about 25 minutes each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_data import HELD_OUT, utterance  # noqa: E402

from avatar_cam.audio.mel import FMAX, FMIN, hz_to_mel, mel_to_hz  # noqa: E402
from avatar_cam.lipsync.phonemes import Segment, labels_at  # noqa: E402
from avatar_cam.lipsync.visemes import SHAPES, WEIGHTS, features  # noqa: E402

HERE = Path(__file__).resolve().parent
FRAME_OFFSET = 0.04 + 0.5 / 80  # frame time of the window starting at column s: s/80 + this (mid-column)


def windows_and_labels(length: int, segs: np.ndarray):
    """Every window start of an utterance of `length` mel columns: starts (n,), labels (n,), weights (n,)."""
    starts = np.arange(length - 15)
    seg_list = [Segment(a, b, int(s), "", bool(c)) for a, b, s, c in segs]
    shape, coart, _ = labels_at(seg_list, starts / 80 + FRAME_OFFSET)
    return starts, shape, np.where(coart, 0.5, 1.0)


def _load(paths: list[Path]):
    """One or more make_data.py files as one: mel (80, total), lengths, segments, segment_utt."""
    mels, lengths, segs, seg_utt, voices, n = [], [], [], [], [], 0
    for path in paths:
        with np.load(path) as z:
            voices.append(z["voice"])
            mels.append(z["mel"])
            lengths.append(z["lengths"])
            segs.append(z["segments"])
            seg_utt.append(z["segment_utt"] + n)
            n += len(z["lengths"])
    return (np.concatenate(mels, axis=1), np.concatenate(lengths), np.concatenate(segs), np.concatenate(seg_utt),
            np.concatenate(voices))


class Windows:
    """All training windows as indices into one long mel array (built once, windows cut per batch).
    Utterances whose voice starts with a name in `held_out` are left out; `held_out_only` keeps only them."""

    def __init__(self, paths: list[Path], held_out: tuple[str, ...] = (), held_out_only: bool = False):
        self.mel, lengths, segs, seg_utt, voices = _load(paths)  # mel: (80, total) float16
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        cols, labels, weights, owners = [], [], [], []
        first = np.searchsorted(seg_utt, np.arange(len(lengths) + 1))  # segments are stored utterance by utterance
        for u, (off, length) in enumerate(zip(offsets, lengths, strict=True)):
            if str(voices[u]).split(" ")[0].split("+")[0] in held_out:
                if not held_out_only:
                    continue
            elif held_out_only:
                continue
            s, y, w = windows_and_labels(int(length), segs[first[u] : first[u + 1]])
            cols.append(off + s)
            labels.append(y)
            weights.append(w)
            owners.append(np.full(len(s), u))
        self.start = np.concatenate(cols)
        self.label = np.concatenate(labels)
        self.weight = np.concatenate(weights).astype(np.float32)
        self.bounds = np.stack([offsets, offsets + lengths], 1)[np.concatenate(owners)]
        self.eq_db = 6.0
        self.smear = 0.0

    def batch(self, idx: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        start = self.start[idx]
        if rng is not None:  # +-1 column of jitter, inside the utterance
            start = np.clip(start + rng.integers(-1, 2, len(idx)), self.bounds[idx, 0], self.bounds[idx, 1] - 16)
        x = self.mel[:, start[:, None] + np.arange(16)].astype(np.float32).transpose(1, 0, 2)  # (B,80,16)
        if rng is not None:
            x = augment(x, rng, self.eq_db, self.smear)
        return x


def _warps(factors: np.ndarray) -> np.ndarray:
    """(len(factors), 80, 80): per factor a, the mel bands of a voice whose vocal tract is 1/a as long
    (every frequency times a), by linear interpolation between the bands' centre frequencies."""
    edges = mel_to_hz(np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), 82))
    centres = edges[1:-1]
    out = np.zeros((len(factors), 80, 80), np.float32)
    for n, a in enumerate(factors):
        pos = np.interp(centres / a, centres, np.arange(80.0))  # source band (fractional) of each target band
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, 79)
        w = pos - lo
        out[n, np.arange(80), lo] += 1 - w
        out[n, np.arange(80), hi] += w
    return out


WARP_FACTORS = np.linspace(0.84, 1.24, 11)
WARPS = _warps(WARP_FACTORS)


def _blurs(sigmas, n: int) -> np.ndarray:
    """(len(sigmas), n, n): Gaussian smoothing along an axis of n bins (rows sum to 1; sigma 0: identity)."""
    i = np.arange(n)
    out = np.zeros((len(sigmas), n, n), np.float32)
    for k, s in enumerate(sigmas):
        g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / s) ** 2) if s > 0 else np.eye(n)
        out[k] = g / g.sum(1, keepdims=True)
    return out


# Smoothed spectra, as statistical-parametric synthesis (HTS, clustergen) makes them: an over-smoothed envelope
# and smooth trajectories. Half of the examples get one of these (--smear).
BAND_BLURS = _blurs([0.0, 0.8, 1.3, 2.0], 80)
TIME_BLURS = _blurs([0.0, 0.6, 1.0], 16)


_EQ_KNOTS = np.linspace(0, 79, 6)


def augment(x: np.ndarray, rng: np.random.Generator, eq_db: float = 6.0, smear: float = 0.0) -> np.ndarray:
    """Gain (a shift of the normalised mel), vocal tract length (every frequency scaled by 0.84..1.24), a
    smooth random equaliser (+-eq_db at 6 points across the bands: a voice's timbre, a microphone's colour) and,
    for a share `smear` of the examples, a smoothing across bands and over time (BAND_BLURS, TIME_BLURS)."""
    b = len(x)
    x = np.clip(x + rng.uniform(-1.2, 0.5, (b, 1, 1)).astype(np.float32), -4, 4)
    warp = WARPS[rng.integers(0, len(WARPS), b)]
    if smear > 0:
        on = rng.random(b) < smear
        band = np.where(on, rng.integers(1, len(BAND_BLURS), b), 0)
        warp = np.einsum("bij,bjk->bik", BAND_BLURS[band], warp, optimize=True)
        x = np.einsum("bij,bjk->bik", x, TIME_BLURS[np.where(on, rng.integers(0, len(TIME_BLURS), b), 0)].transpose(0, 2, 1),
                      optimize=True)
    x = np.einsum("bij,bjt->bit", warp, x, optimize=True)
    if eq_db > 0:
        knots = rng.uniform(-eq_db, eq_db, (b, len(_EQ_KNOTS))) * 0.08  # 1 dB is 0.08 of the normalised mel
        eq = np.stack([np.interp(np.arange(80), _EQ_KNOTS, k) for k in knots]).astype(np.float32)
        x = np.clip(x + eq[:, :, None], -4, 4)
    return x


def held_out_set(n: int, seed: int):
    """Validation windows from espeak-ng voices that make_data.py never uses."""
    pool = sorted(HELD_OUT)
    xs, ys = [], []
    for i in range(n):
        _, mels, segs, _ = utterance(10_000_000 + i, seed, pool)
        for m in mels:
            s, y, _ = windows_and_labels(m.shape[1], segs)
            xs.append(m[:, s[:, None] + np.arange(16)].transpose(1, 0, 2))
            ys.append(y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


class Net(nn.Module):
    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int, dropout: float):
        super().__init__()
        layers, d = [], n_in
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, n_out))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def export(net: Net, mean: np.ndarray, scale: np.ndarray, out: Path, meta: dict) -> None:
    linears = [m for m in net.body if isinstance(m, nn.Linear)]
    arrays = {"shapes": np.array(SHAPES), "layers": len(linears), "mean": mean.astype(np.float16),
              "scale": scale.astype(np.float16), **{k: np.array(v) for k, v in meta.items()}}
    for i, lin in enumerate(linears):
        arrays[f"w{i}"] = lin.weight.detach().numpy().T.astype(np.float16)
        arrays[f"b{i}"] = lin.bias.detach().numpy().astype(np.float16)
    np.savez_compressed(out, **arrays)


def load_net(path: Path) -> tuple[Net, np.ndarray, np.ndarray]:
    """A single network's weights file (as `export` writes it) -> (net, mean, scale), to train further."""
    with np.load(path) as z:
        if "members" in z.files:
            raise ValueError(f"{path} is an ensemble: give one of its members")
        ws = [(z[f"w{i}"].astype(np.float32), z[f"b{i}"].astype(np.float32)) for i in range(int(z["layers"]))]
        mean, scale = z["mean"].astype(np.float32), z["scale"].astype(np.float32)
    net = Net(ws[0][0].shape[0], tuple(w.shape[1] for w, _ in ws[:-1]), ws[-1][0].shape[1], dropout=0.2)
    with torch.no_grad():
        for lin, (w, b) in zip([m for m in net.body if isinstance(m, nn.Linear)], ws, strict=True):
            lin.weight.copy_(torch.from_numpy(w.T))
            lin.bias.copy_(torch.from_numpy(b))
    return net, mean, scale


def merge(paths: list[Path], out: Path) -> None:
    """Several trained weights files -> one ensemble file (`VisemeEstimator` averages its members' probabilities).
    The first member keeps the single network's array names, so a one-member file reads as before."""
    arrays: dict = {}
    for j, path in enumerate(paths):
        with np.load(path) as z:
            if "members" in z.files:
                raise ValueError(f"{path} is already an ensemble")
            pre = f"m{j}_" if j else ""
            for k in z.files:
                if k not in ("shapes",) or not j:
                    arrays[k if k == "shapes" else pre + k] = z[k]
    arrays["members"] = np.array(len(paths))
    np.savez_compressed(out, **arrays)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, nargs="+",
                    default=[HERE / "data" / f"{name}.npz" for name in ("espeak", "festival", "festival_ked")])
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--per-epoch", type=float, default=0.25, help="share of the windows each epoch sees (neighbours are alike)")
    ap.add_argument("--hold-out", nargs="*", default=["upc_ca_ona_hts"],
                    help="festival voices kept out of training, for validation (default: the Catalan HTS voice)")
    ap.add_argument("--eq-db", type=float, default=6.0, help="random equaliser's reach (0: none)")
    ap.add_argument("--smear", type=float, default=0.0, help="share of examples smoothed across bands and time (0: none)")
    ap.add_argument("--rs-weight", type=float, default=1.0, help="extra weight of rounded and spread frames")
    ap.add_argument("--rs-pair", type=float, default=0.0,
                    help="weight of a second loss on rounded and spread frames: rounded against spread alone (0: none)")
    ap.add_argument("--closed-weight", type=float, default=3.0, help="extra weight of closed-lip frames")
    ap.add_argument("--init", type=Path, help="start from these trained weights (one network) instead of at random")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one cycle)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="WEIGHTS",
                    help="no training: write these trained weights files to --out as one ensemble")
    args = ap.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB): {len(args.merge)} members")
        return 0
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # deterministic reductions; and the machine is shared
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    data = Windows(args.data, tuple(args.hold_out))
    data.eq_db = args.eq_db
    data.smear = args.smear
    val_x, val_y = held_out_set(60, args.seed)
    if args.hold_out:  # a second validation: festival voices left out of training (a step to other synthesis)
        other = Windows(args.data, tuple(args.hold_out), held_out_only=True)
        pick = np.random.default_rng(args.seed).permutation(len(other.start))[: len(val_y)]
        val_x, val_y = np.concatenate([val_x, other.batch(np.sort(pick), None)]), np.concatenate([val_y, other.label[np.sort(pick)]])
        n_espeak = len(val_y) - len(pick)
    else:
        n_espeak = len(val_y)
    print(f"{len(data.start)} training windows, {len(val_y)} validation windows ({time.time() - t0:.0f} s)", file=sys.stderr)

    probe = features(data.batch(rng.choice(len(data.start), 20000, replace=False), None))
    mean, scale = probe.mean(0), 1.0 / (probe.std(0) + 1e-3)
    if args.init:
        net, mean, scale = load_net(args.init)
    else:
        net = Net(probe.shape[1], tuple(args.hidden), len(SHAPES), dropout=0.2)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    per_epoch = int(args.per_epoch * len(data.start)) // args.batch
    steps = args.epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    class_w = torch.ones(len(SHAPES))
    class_w[SHAPES.index("closed")] = args.closed_weight
    class_w[SHAPES.index("rounded")] = class_w[SHAPES.index("spread")] = args.rs_weight
    loss_fn = nn.CrossEntropyLoss(weight=class_w, reduction="none", label_smoothing=0.05)
    rs_pair = torch.tensor([SHAPES.index("rounded"), SHAPES.index("spread")])
    pair_fn = nn.CrossEntropyLoss(reduction="none")
    prep = lambda x: torch.from_numpy((features(x) - mean) * scale)  # noqa: E731
    for epoch in range(args.epochs):
        net.train()
        order = rng.permutation(len(data.start))[: per_epoch * args.batch]
        total = 0.0
        for b in range(len(order) // args.batch):
            idx = np.sort(order[b * args.batch : (b + 1) * args.batch])
            x = prep(data.batch(idx, rng))
            y, w = torch.from_numpy(data.label[idx]), torch.from_numpy(data.weight[idx])
            z = net(x)
            loss = (loss_fn(z, y) * w).mean()
            if args.rs_pair > 0:  # the rounder of the two, on rounded and spread frames (what `bench visemes` scores)
                loss = loss + args.rs_pair * (pair_fn(z[:, rs_pair], (y == rs_pair[1]).long()) * w * torch.isin(y, rs_pair)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        net.eval()
        with torch.no_grad():
            pred = net(prep(val_x)).argmax(1).numpy()
        parts = []
        for name, part in (("held-out espeak voices", slice(0, n_espeak)), ("held-out festival voices", slice(n_espeak, None))):
            p, y = pred[part], val_y[part]
            if len(y):
                closed = y == SHAPES.index("closed")
                parts.append(f"{name}: accuracy {(p == y).mean():.3f}, closed recall {(p[closed] == y[closed]).mean():.3f}")
        print(f"epoch {epoch + 1}: loss {total / (len(order) // args.batch):.3f}, {'; '.join(parts)} ({time.time() - t0:.0f} s)",
              file=sys.stderr)
    export(net, mean, scale, args.out, {"seed": args.seed, "epochs": args.epochs})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
