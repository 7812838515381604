"""The guest's sound: a PulseAudio server standing in for the sound card, speech played into its speaker's
monitor (the daemon's microphone), a plain client listening to that microphone beside the daemon (the voice
probe: when the sound reached a cheap reader, to tell the sound server's delay from the daemon's), and
parec recording "Avatar Cam Microphone" beside Chromium."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from guest_io import EXTRA, JOB, RESULTS, RUNTIME, autogroup, mark, product_env, sh, step

PA_CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name=test_speaker rate=48000 channels=1
set-default-sink test_speaker
set-default-source test_speaker.monitor
"""
PROBE_RATE, PROBE_BLOCK = 16000, 800  # the probe reads 50 ms blocks of 16 kHz mono (parec hands over 100 ms at a time)


class VoiceProbe:
    """parec on a source at 16 kHz mono: (epoch ms, rms) of every 50 ms block as it arrives, and the sound itself
    in `keep` if given. On the microphone (test_speaker.monitor) it also keeps the idle null sink's monitor flowing
    (see TESTING.md)."""

    def __init__(self, source: str = "test_speaker.monitor", keep: Path | None = None) -> None:
        self.blocks: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.keep = keep.open("wb") if keep is not None else None
        self.process = subprocess.Popen(
            ["parec", "-d", source, "--raw", "--format=s16le", f"--rate={PROBE_RATE}", "--channels=1",
             "--latency-msec=100"],
            env=product_env(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.reader = threading.Thread(target=self._read, name="voice-probe", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while (data := self.process.stdout.read(2 * PROBE_BLOCK)):
            if self.keep is not None:
                self.keep.write(data)
            x = np.frombuffer(data, np.int16).astype(np.float32) / 32768
            with self.lock:
                self.blocks.append((round(time.time() * 1000, 1), round(float(np.sqrt((x**2).mean())), 4)))
        if self.keep is not None:
            self.keep.close()

    def snapshot(self) -> list:
        with self.lock:
            return list(self.blocks)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)


@step("pulseaudio")
def start_pulseaudio() -> dict:
    RUNTIME.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = RUNTIME / "pa.pa"
    config.write_text(PA_CONFIG)
    env = product_env()
    # No real-time scheduling: under emulation its CPU-time limit would get the server killed. Instead, as a
    # desktop's sound server has (rtkit), priority: its own scheduling group (a session of its own) weighted as
    # nice -11, so the apps beside it (Chromium, the daemon) cannot starve it. The cheapest resampler, as the
    # emulated guest barely keeps up.
    server = subprocess.Popen(["pulseaudio", "--resample-method=trivial", "--realtime=no", "--high-priority=yes",
                               "--no-cpu-limit", "--exit-idle-time=-1", "--disallow-exit", "-n", "-F", str(config),
                               f"--log-target=file:{RESULTS}/pulseaudio.log"], env=env, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    group = autogroup(server.pid, nice=-11)
    for _ in range(100):
        if sh("pactl", "info", env=env, timeout=5)["rc"] == 0:
            break
        time.sleep(0.2)
    probe = VoiceProbe()
    EXTRA["probe"] = probe.snapshot
    time.sleep(2)
    return {"info": sh("pactl", "info", env=env)["stdout"][-600:], "autogroup": group}


def play_speech(short: bool) -> subprocess.Popen:
    mark("speech starts", short=short)
    return subprocess.Popen(["paplay", "-d", "test_speaker", JOB["speech_short" if short else "speech"]],
                            env=product_env())


def speak_and_wait(seconds_after: float, short: bool = True) -> None:
    """Play the speech (all three phrases, or the first two), then wait a little."""
    player = play_speech(short)
    player.wait(timeout=120)
    mark("speech ends")
    time.sleep(seconds_after)


def record_avatar_mic(path: Path) -> VoiceProbe:
    """Record "Avatar Cam Microphone" beside Chromium, and when each block of it arrived: what the product plays,
    whatever the page hears (and, against the page, how long Chromium itself takes to hear it)."""
    probe = VoiceProbe("avatar_cam_mic", keep=path)
    EXTRA["avatar_mic_probe"] = probe.snapshot
    return probe


def loudness(path: Path) -> dict:
    x = np.frombuffer(path.read_bytes() if path.exists() else b"", np.int16).astype(np.float32) / 32768
    blocks = x[: len(x) // 1600 * 1600].reshape(-1, 1600)  # 100 ms
    rms = np.sqrt((blocks**2).mean(axis=1)) if len(blocks) else np.zeros(0)
    return {"seconds": round(len(x) / 16000, 1), "rms_max": round(float(rms.max(initial=0)), 4),
            "blocks_over_0.01": int((rms > 0.01).sum())}


def sound_state() -> dict:
    """What the sound server holds for whom (its buffers, per stream)."""
    env = product_env()
    return {"sink_inputs": sh("pactl", "list", "sink-inputs", env=env, keep=6000)["stdout"],
            "source_outputs": sh("pactl", "list", "source-outputs", env=env, keep=8000)["stdout"]}
