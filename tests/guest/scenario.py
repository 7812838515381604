"""What the host prepares for one guest run, and the run itself.

The inputs (two photos, the references the page compares frames with, the speech, the page) go into the
results folder, which the guest sees as /tmp/results. The references are the still frames the product's own
compositor makes of each photo at each size, and the box its Lite engine may change (the mouth and jaw), so
the page can tell "the portrait arrived" (outside the box) from "the mouth moves" (inside it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import soundfile
import speed
from kit import GuestKit, build_kit
from vm import Boot, boot

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# 3 frames a second: the emulated guest drew 1.8-3.5 of 5 beside Chromium and the sound server (the camera's
# rate is a setting a user of a slow machine would lower too); the checks count frames, not their rate.
FIRST_SIZE, SECOND_SIZE, FPS = (320, 180), (256, 144), 3
UTTERANCES = ("Hello, this is Avatar Cam speaking to you.", "My mouth moves when my voice plays.",
              "Then it rests in the silence.")
GAP_S = 2.5


def write_photos(folder: Path) -> list[Path]:
    from skimage import data

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    photos = [folder / "astronaut.png", folder / "astronaut_mirrored.png"]
    cv2.imwrite(str(photos[0]), astronaut)
    cv2.imwrite(str(photos[1]), cv2.flip(astronaut, 1))
    return photos


def reference(photo: Path, size: tuple[int, int], out: Path) -> dict:
    """The product's still frame of `photo` at `size` (PNG, RGB order as browsers read it) and its mouth box."""
    from avatar_cam.lipsync.lite import LiteLipSync
    from avatar_cam.video.compositor import Compositor, OutputFormat
    from avatar_cam.video.portrait import Portrait

    portrait = Portrait.load(photo)
    compositor = Compositor(portrait, OutputFormat(width=size[0], height=size[1]))
    lite = LiteLipSync()
    lite.set_face(portrait)
    box = compositor.output_region(lite.canvas_painter(compositor.canvas_unmirrored(), compositor.layout).region)
    cv2.imwrite(str(out), compositor.idle_frame)
    w, h = size
    return {"name": photo.stem, "width": w, "height": h, "url": out.name,
            "mouth": [box[0] / w, box[1] / h, box[2] / w, box[3] / h], "box_px": [int(v) for v in box]}


def write_speech(path: Path) -> list[tuple[float, float]]:
    """Utterances with silences between them; returns each one's (start, end) in seconds in the file."""
    parts, spans, t, rate = [], [], 1.0, 22050
    parts.append(np.zeros(int(rate * t), np.float32))
    for i, text in enumerate(UTTERANCES):
        raw = path.with_name(f"utterance{i}.wav")
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
        wav, rate = soundfile.read(raw, dtype="float32")
        spans.append((t, t + len(wav) / rate))
        t += len(wav) / rate + GAP_S
        parts += [wav, np.zeros(int(rate * GAP_S), np.float32)]
        raw.unlink()
    speech = np.concatenate(parts)
    # At the sinks' 48 kHz, so that the guest's PulseAudio need not resample it.
    speech = np.interp(np.arange(0, len(speech), rate / 48000), np.arange(len(speech)), speech).astype(np.float32)
    soundfile.write(path, speech, 48000)
    # The steps after the first talk need less (the mouth moves, or holds still): the first two phrases.
    soundfile.write(short_path(path), speech[: int(48000 * (spans[1][1] + GAP_S))], 48000)
    return spans


def short_path(speech: Path) -> Path:
    return speech.with_name(speech.stem + "_short.wav")


def prepare(results: Path, kit: GuestKit, timeout_s: float) -> dict:
    web = results / "web"
    web.mkdir(parents=True, exist_ok=True)
    photos = write_photos(results)
    references = [reference(p, size, web / f"{p.stem}_{size[0]}x{size[1]}.png")
                  for p in photos for size in (FIRST_SIZE, SECOND_SIZE)]
    (web / "config.json").write_text(json.dumps({"references": references, "camera_label": "Avatar Cam",
                                                 "mic_label": "Avatar Cam Microphone"}))
    shutil.copy2(HERE / "call_page.html", web / "call_page.html")
    spans = write_speech(results / "speech.wav")
    guest = Path("/tmp/results")  # where the guest sees `results`
    job = {"repo": str(REPO), "python": sys.executable, "photos": [str(guest / p.name) for p in photos],
           "speech": str(guest / "speech.wav"), "speech_short": str(short_path(guest / "speech.wav")),
           "speech_spans": spans, "web": str(guest / "web"),
           "first_size": FIRST_SIZE, "second_size": SECOND_SIZE, "fps": FPS, "silence_s": 3, "ffmpeg_s": 4,
           "references": references, "host_speed_s": speed.measure()}
    (results / "job.json").write_text(json.dumps(job, indent=1))
    # GUEST_REPO goes first on the guest's PYTHONPATH: the Python may have another checkout of the product
    # installed (an editable install of the main worktree), and the guest must run this one.
    (results / "job.env").write_text(
        f"GUEST_PYTHON={sys.executable}\nGUEST_REPO={REPO}\nGUEST_CHECKS={HERE / 'in_guest.py'}\n"
        f"GUEST_MODULES={kit.root / 'lib/modules'}\n"
        f"GUEST_BUSYBOX={kit.root / 'bin/busybox'}\nGUEST_TIMEOUT_S={int(timeout_s)}\n")
    return job


def precompile() -> None:
    """Byte-compile the product and the guest script on the host: the guest sees the host's files read-only
    under a tmpfs overlay, so whatever it compiles itself is lost at power-off and compiled again, in every
    process of every run, under emulation. (`compileall` writes even where PYTHONDONTWRITEBYTECODE is set.)"""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "avatar_cam"), str(HERE)], check=True)


def run(results: Path, timeout_s: float = 600) -> tuple[Boot, dict]:
    """Build (or reuse) the kit, prepare the inputs, boot; returns the boot and the guest's report.

    AVATAR_GUEST_PAUSE_FILE names a file whose presence pauses the guest (see vm.boot)."""
    kit = build_kit()
    precompile()
    prepare(results, kit, timeout_s - 60)
    pause = os.environ.get("AVATAR_GUEST_PAUSE_FILE")
    booted = boot(kit, HERE / "guest_main.sh", results, timeout_s, Path(pause) if pause else None,
                  show=[REPO, Path(sys.executable)])
    report_path = results / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return booted, report
