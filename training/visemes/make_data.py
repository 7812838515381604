"""Training data for the mouth-shape estimator: synthetic speech with its phoneme timing, as mel + shapes.

Run (from the repository root, in the project's venv):
    .venv/bin/python training/visemes/make_data.py            # -> training/visemes/data/espeak.npz
    .venv/bin/python training/visemes/make_data.py --source festival   # -> training/visemes/data/festival.npz
    .venv/bin/python training/visemes/make_data.py --source festival --voices ked_diphone --utterances 900 \
        --seed 16 --out training/visemes/data/festival_ked.npz   # more US English (the committed model's third file)
    .venv/bin/python training/visemes/make_data.py --utterances 200 --out /tmp/small.npz   # a quick one

What it makes: random English sentences (from the word list below, seeded) spoken by many espeak-ng voices
and variants at random speeds, pitches and pitch ranges; each utterance is stored as Wav2Lip's normalised
mel spectrogram (80 x T, float16) in two versions: as synthesized (with a random gain), and degraded (gain,
background noise at 10-40 dB SNR, a random low-pass between 3.5 and 8 kHz as phones and cheap microphones
have, a random spectral tilt). Beside it the shape segments (start, end, shape, coarticulated) from
`avatar_cam.lipsync.phonemes`. The same seed makes the same file. The data folder is git-ignored.
Voices listed in HELD_OUT are never used here (they are for validation in train.py).
Time here: 8-10 minutes for 2400 utterances (2 vCPU shared with other work, one process); 246 MB.

`--source festival`: the same sentences spoken by festival's voices that the benchmark never uses
(FESTIVAL_TRAIN: one US English diphone voice, and Italian, Czech, Finnish and Catalan voices reading the
English words with their own rules; Debian packages in `synthetic_speech.FESTIVAL_VOICES`), each utterance at
a random tempo (festival's Duration_Stretch 0.8-1.3) and resampled so every frequency is scaled by 0.88-1.15
(a shorter or longer vocal tract, a higher or lower voice). The benchmark's voices (flite's, festival's
kal_diphone and the slt HTS voice: `bench.visemes.HELD_OUT_VOICES`) are refused here.
Time here: 15.5 minutes for 2000 utterances (2 vCPU busy with other work, one process); 255 MB, 5.35 h of mel.
`--voices ked_diphone`: festival's one US English voice the benchmark does not use, alone, on other sentences
(another seed): US English is what the benchmark speaks, and only a ninth of festival.npz. 10.5 minutes here for
900 utterances (beside a training run), 2.35 h of mel.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from avatar_cam.audio.mel import melspectrogram
from avatar_cam.bench.visemes import HELD_OUT_VOICES
from avatar_cam.lipsync.phonemes import segments, unmapped
from avatar_cam.lipsync.synthetic_speech import espeak_speech, festival_speech

HERE = Path(__file__).resolve().parent
LANGS = ["en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc", "en-gb-x-rp"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "klatt4", "croak", "Alex", "Andy", "Annie", "Denis", "Gene", "Jacky", "Lee", "Mr serious",
            "adam", "anika", "aunty", "belinda", "benjamin", "boris", "caleb", "david", "edward", "grandma",
            "grandpa", "iven", "john", "linda", "max", "michel", "norbert", "paul", "pedro", "quincy", "robert",
            "steph", "travis", "victor", "zac"]
HELD_OUT = {("en-gb-x-rp", "f4"), ("en-us", "m7"), ("en-029", "f2"), ("en-us", "linda")}
FESTIVAL_TRAIN = ["ked_diphone", "lp_diphone", "pc_diphone", "czech_dita", "czech_krb", "czech_ph",
                  "suo_fi_lj_diphone", "hy_fi_mv_diphone", "upc_ca_ona_hts"]
assert not {("festival", v) for v in FESTIVAL_TRAIN} & set(HELD_OUT_VOICES), "the benchmark's voices stay held out"

_WORD_LIST = """
a an the this that these those my your his her our their some any every each no all both many few more most
I you he she it we they me him us them who what which where when why how here there now then soon today
is are was were be been being am have has had do does did will would can could shall should may might must
go goes went gone come came make made take took give gave get got put keep kept let see saw seen look looked
hear heard say said tell told think thought know knew feel felt find found want need like love hope wish
try tried call called ask asked answer work worked play played move moved live lived bring brought buy bought
pay paid meet met leave left begin began show showed run ran walk walked talk talked sit sat stand stood
open opened close closed wait waited watch watched use used help helped turn turned start started stop
mother father brother sister baby family friend people person man woman boy girl child children teacher
doctor farmer driver player member neighbour uncle aunt cousin queen king
house home room door window wall floor roof garden street road bridge city town village country world map
school office shop market bank hospital church park beach mountain river lake sea ocean island forest field
food bread butter milk cheese meat fish apple orange lemon banana potato tomato soup rice cake cookie coffee
tea water juice wine beer sugar salt pepper egg breakfast lunch dinner supper plate cup bowl spoon knife fork
car bus train boat ship plane bike bicycle truck wheel engine ticket station airport
dog cat cow horse sheep goat pig bird duck mouse moose goose bear wolf fox rabbit monkey bee fly fish whale
book paper pen pencil letter page story word name number music movie picture photo phone camera computer
money price job business meeting problem question idea reason result voice moment minute hour week month year
morning evening night noon spring summer autumn winter weather rain snow wind sun moon star cloud sky fire
red blue green yellow purple pink brown black white grey gold silver
big small little large huge tiny long short tall high low deep wide narrow thick thin heavy light full empty
good bad better best worse worst new old young early late fast slow quick easy hard soft warm cool hot cold
happy sad angry calm busy free cheap poor rich clean dirty quiet loud true false real sure strange beautiful
smooth rough sweet sour bitter fresh ripe blue loose tight proud shy brave lazy clever foolish wise mean
very really quite rather too also only just even still already almost always never often sometimes maybe
and or but so because if unless although while until before after since though
in on at to from into onto over under above below between behind beside through across around along past
with without about against among during toward upon near far off out up down away back
one two three four five six seven eight nine ten twenty thirty hundred thousand million first second third
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July August
yes please thanks sorry hello goodbye okay well oh wow hmm
bob pam mimi bobby tommy peter paula barbara martin emma mike maria robert olivia hugo ruth luke zoe mabel
boom pop bump mop map mama papa moo boo poo peep beep bubble pebble maple umbrella improve impossible
food mood room soon spoon moon noon tune June rude blue true through who whose shoe two do you
see me be tea key free knee tree sheep cheese leaf leave feet meat seat beach peach reach eat
father far car star heart art part smart calm palm are large dark park
go so show know slow snow boat coat goat road home phone bone stone rope hope open over ocean
cat hat bat fat mat rat sat that flat plan man can fan pan van ham jam lamp stamp happy apple
fish wish dish ship chip lip tip sip bit fit hit kit sit pig big dig wig pin tin win
bed red fed led pen ten hen men get let met net pet wet yet egg leg bell tell well shell
up cup pup bus much such cut but nut luck duck truck fun sun run gun mud blood love above
"""
WORDS = _WORD_LIST.split()


def sentence(rng: np.random.Generator) -> str:
    """A random string of words, sometimes cut by commas and full stops (which make pauses)."""
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(3, 9))
        words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)]
        parts.append(" ".join(words) + str(rng.choice([",", ".", "?", "!", ";"])))
    return " ".join(parts)


def degrade(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain, low-pass, spectral tilt and background noise: speech as a real microphone might send it."""
    spec = np.fft.rfft(audio)
    hz = np.fft.rfftfreq(len(audio), 1 / 16000)
    cutoff = rng.uniform(3500, 8000)
    tilt_db_per_octave = rng.uniform(-4, 3)
    shape = 1.0 / (1.0 + (hz / cutoff) ** 12)
    shape *= 10 ** (tilt_db_per_octave * np.log2(np.maximum(hz, 100) / 1000) / 20)
    out = np.fft.irfft(spec * shape, len(audio))
    rms = np.sqrt(np.mean(out ** 2)) + 1e-9
    noise = rng.standard_normal(len(out))
    if rng.random() < 0.5:  # pink-ish noise, like a room or a fan, else white (hiss)
        n = np.fft.rfft(noise) / np.sqrt(np.maximum(hz, 20) / 20)
        noise = np.fft.irfft(n, len(out))
    noise *= rms * 10 ** (-rng.uniform(10, 40) / 20) / (np.sqrt(np.mean(noise ** 2)) + 1e-9)
    return gain(out + noise, rng)


def gain(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak = np.abs(audio).max() + 1e-9
    return (audio / peak * 10 ** (rng.uniform(-30, -1) / 20)).astype(np.float32)


def voices() -> list[tuple[str, str]]:
    return [(lang, v) for lang in LANGS for v in VARIANTS if (lang, v) not in HELD_OUT]


def _padded(speech, rng: np.random.Generator):
    """Silence before and after, as a gated stream has; the segments moved with it."""
    pad = np.zeros(int(rng.integers(1600, 8000)), np.float32)
    audio = np.concatenate([pad, speech.audio, pad[: len(pad) // 2]])
    shift = len(pad) / 16000
    segs = [(s.start + shift, s.end + shift, s.shape, s.coarticulated) for s in segments(speech)]
    return audio, np.array(segs, np.float64).reshape(-1, 4)


def utterance(i: int, seed: int, pool: list[tuple[str, str]]):
    rng = np.random.default_rng([seed, i])
    lang, variant = pool[int(rng.integers(len(pool)))]
    voice = lang + ("+" + variant if variant else "")
    speech = espeak_speech(sentence(rng), voice, rate=int(rng.integers(110, 280)), pitch=int(rng.integers(10, 90)),
                           pitch_range=int(rng.integers(10, 90)))
    audio, segs = _padded(speech, rng)
    mels = [melspectrogram(gain(audio, rng)), melspectrogram(degrade(audio, rng))]
    return voice, mels, segs, unmapped(speech)


def festival_utterance(i: int, seed: int, pool: list[str]):
    import soxr

    rng = np.random.default_rng([seed, 1, i])
    voice = pool[int(rng.integers(len(pool)))]
    stretch = float(rng.uniform(0.8, 1.3))
    for _ in range(5):  # some voices stop on some English texts (festival's Italian rules): another sentence
        try:
            speech = festival_speech(sentence(rng), voice, stretch=stretch)
            break
        except subprocess.CalledProcessError:
            continue
    else:
        raise RuntimeError(f"festival {voice} failed on five sentences in a row")
    scale = float(rng.uniform(0.88, 1.15))  # every frequency times `scale`, every time divided by it
    speech.audio = soxr.resample(speech.audio, 16000, 16000 / scale).astype(np.float32)
    speech.phones = [type(p)(p.symbol, p.start / scale, p.end / scale) for p in speech.phones]
    audio, segs = _padded(speech, rng)
    mels = [melspectrogram(gain(audio, rng)), melspectrogram(degrade(audio, rng))]
    return f"{voice} x{scale:.2f}", mels, segs, unmapped(speech)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, help="default: 2400 (espeak), 2000 (festival)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--source", choices=("espeak", "festival"), default="espeak")
    ap.add_argument("--out", type=Path, help="default: training/visemes/data/SOURCE.npz")
    ap.add_argument("--voices", nargs="+", help="--source festival: only these of FESTIVAL_TRAIN (default: all)")
    args = ap.parse_args(argv)
    args.out = args.out or HERE / "data" / f"{args.source}.npz"
    args.utterances = args.utterances or (2400 if args.source == "espeak" else 2000)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pool = voices() if args.source == "espeak" else FESTIVAL_TRAIN
    if args.voices:
        if args.source != "festival" or not set(args.voices) <= set(FESTIVAL_TRAIN):
            ap.error(f"--voices: festival voices of {' '.join(FESTIVAL_TRAIN)}")
        pool = list(args.voices)
    make = utterance if args.source == "espeak" else festival_utterance
    t0 = time.time()
    mels, segs, utt_voice, utt_version, seg_utt, symbols = [], [], [], [], [], set()
    for i in range(args.utterances):
        voice, ms, sg, unk = make(i, args.seed, pool)
        symbols |= unk
        for version, m in enumerate(ms):
            utt = len(mels)
            mels.append(m.astype(np.float16))
            utt_voice.append(voice)
            utt_version.append(version)
            segs.append(sg)
            seg_utt.append(np.full(len(sg), utt))
        if (i + 1) % 200 == 0:
            print(f"{i + 1}/{args.utterances} utterances, {time.time() - t0:.0f} s", file=sys.stderr)
    lengths = np.array([m.shape[1] for m in mels])
    np.savez(args.out, mel=np.concatenate(mels, axis=1), lengths=lengths, segments=np.concatenate(segs),
             segment_utt=np.concatenate(seg_utt), voice=np.array(utt_voice), version=np.array(utt_version), seed=args.seed)
    hours = lengths.sum() / 80 / 3600
    print(f"wrote {args.out}: {len(mels)} mels ({hours:.2f} h), {len(pool)} voices, {time.time() - t0:.0f} s; "
          f"lingual consonants (coarticulated): {' '.join(sorted(symbols))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
