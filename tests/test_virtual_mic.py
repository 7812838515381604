""""Avatar Cam Microphone" on a real PulseAudio server (the `pulse_server` fixture): the product creates and
removes its own devices, the voice comes back delayed by what the frames measure, and nothing is left behind
however the product ends (normal exit, Ctrl-C, SIGTERM, SIGKILL, a crashing frame thread)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import camera_recorder
import numpy as np
import pytest
from helpers import defaults, device_names, eventually, voice_windows

from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import MicrophoneSource
from avatar_cam.errors import VirtualMicError
from avatar_cam.lipsync.wav2lip import Wav2LipLipSync
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.pipeline import LivePipeline
from avatar_cam.live.renderer import FrameRenderer
from avatar_cam.outputs.camera import VirtualCameraSink
from avatar_cam.video.compositor import OutputFormat
from avatar_cam.video.portrait import Portrait
from avatar_cam.vmic.cables import find_virtual_cable
from avatar_cam.vmic.microphone import DESCRIPTION, VirtualMicrophone
from avatar_cam.vmic.pulse import SINK, SOURCE
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW
from avatar_cam.wav2lip.engine import Wav2LipEngine

SIZE = OutputFormat(320, 180)


def described_sources(pulse) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in pulse.pactl("list", "sources").stdout.splitlines()
            if line.strip().startswith("Description:")]


def janitors_of(pid: int) -> list[int]:
    """Our `sh` janitors still alive for a product process (they carry its pid in MARK)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"MARK=avatar_cam.owner={pid}.".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def engine(random_checkpoint, tmp_path_factory):
    return Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path_factory.mktemp("cache"),
                                         first_row=MOUTH_FIRST_ROW)  # the live camera's form


def test_devices_are_created_and_removed_and_the_defaults_stay(pulse_server):
    before = defaults(pulse_server)
    # A server that switches to every new device (module-switch-on-connect) tries to make ours the default.
    switch = pulse_server.pactl("load-module", "module-switch-on-connect", "ignore_virtual=no").stdout.strip()
    try:
        with VirtualMicrophone(AudioRing()) as vmic:
            assert {SINK, SOURCE} <= device_names(pulse_server)
            assert DESCRIPTION in described_sources(pulse_server)
            assert defaults(pulse_server) == before
            assert vmic.call_app_device == DESCRIPTION
            assert len(janitors_of(os.getpid())) == 1
            inputs = pulse_server.pactl("list", "sink-inputs").stdout
            assert f"avatar_cam.stream = \"virtual-mic-{os.getpid()}\"" in inputs  # our stream plays, into our sink
        assert not {SINK, SOURCE} & device_names(pulse_server)
        assert defaults(pulse_server) == before
        assert eventually(lambda: not janitors_of(os.getpid()))
    finally:
        pulse_server.pactl("unload-module", switch)


def test_leftovers_of_a_dead_run_are_cleaned_but_a_live_owner_is_respected(pulse_server):
    def load(owner: str) -> None:
        out = pulse_server.pactl("load-module", "module-null-sink", f"sink_name={SINK}", "rate=48000", "channels=1",
                                 f"sink_properties='avatar_cam.owner={owner}'")
        assert out.returncode == 0, out.stderr

    load("999999999.1")  # a run that was killed: its process is gone
    with VirtualMicrophone(AudioRing()):
        modules = pulse_server.pactl("list", "short", "modules").stdout
        assert "999999999.1" not in modules
        assert modules.count(f"sink_name={SINK}") == 1
    assert SINK not in device_names(pulse_server)

    load(str(pulse_server.daemon.pid))  # a live process owns it: not ours to take
    try:
        with pytest.raises(VirtualMicError, match="another running Avatar Cam"):
            VirtualMicrophone(AudioRing()).start()
        assert not janitors_of(os.getpid())
    finally:
        for line in pulse_server.pactl("list", "short", "modules").stdout.splitlines():
            if f"sink_name={SINK}" in line:
                pulse_server.pactl("unload-module", line.split("\t")[0])


# The product's frame loop with the virtual microphone, minus the neural network: a renderer that draws a
# blank frame (or crashes on frame 20), fed by a file source. Modes say how the process ends.
PRODUCT = r"""
import sys, threading, time
from types import SimpleNamespace
import numpy as np
from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import FileSource
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.pipeline import LivePipeline
from avatar_cam.vmic.microphone import VirtualMicrophone

class Renderer:
    gate = SimpleNamespace(update=lambda audio: 0.0)
    idle_frame = np.zeros((8, 8, 3), np.uint8)
    draws_inline = True  # draws every frame on the frame thread, as the Lite engine does

    def __init__(self, crash_at):
        self.crash_at = crash_at

    def render(self, k, mel, audio, paused=False):
        if k == self.crash_at:
            raise RuntimeError("simulated fault in the frame thread")
        return self.idle_frame.copy(), SimpleNamespace(audio_time=k / 30, alpha=0.0, inferred=False)

mode = sys.argv[1]
ring = AudioRing()
source = FileSource((0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), ring, loop=True)
pipe = LivePipeline(Renderer(20 if mode.startswith("crash") else -1), [], ring, FrameClock(30.0))
with VirtualMicrophone(ring) as vmic:
    pipe.on_frame = vmic.observe_frame
    source.start()
    if mode == "crash-thread":  # the daemon's way: frames on their own thread, the process lives on
        frames = threading.Thread(target=pipe.run, name="frames")
        vmic.bind_to(frames)
        frames.start()
        print("ready", flush=True)
        frames.join()
        print("frame thread ended", flush=True)
        time.sleep(60)
    if mode == "exit":
        threading.Timer(1.0, pipe.stop).start()
    print("ready", flush=True)
    pipe.run()
"""


@pytest.mark.parametrize("ending", ["exit", "sigint", "sigterm", "crash", "crash-thread", "sigkill"])
def test_the_device_goes_away_however_the_product_ends(pulse_server, ending):
    before = defaults(pulse_server)
    proc = subprocess.Popen([sys.executable, "-c", PRODUCT, ending], env=pulse_server.subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        assert DESCRIPTION in described_sources(pulse_server)
        assert len(janitors_of(proc.pid)) == 1
        if ending == "sigint":
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        elif ending == "sigterm":
            proc.send_signal(signal.SIGTERM)
        elif ending == "sigkill":
            proc.kill()  # no Python code runs: the janitor must do it
        elif ending == "crash-thread":
            assert proc.stdout.readline().strip() == "frame thread ended"
            assert eventually(lambda: SOURCE not in device_names(pulse_server)), "still there while the process lives"
            assert proc.poll() is None
            proc.kill()
        proc.wait(timeout=10)
        if ending == "crash":
            assert "simulated fault" in proc.stderr.read()
        assert eventually(lambda: not {SINK, SOURCE} & device_names(pulse_server)), ending
        assert defaults(pulse_server) == before
        assert eventually(lambda: not janitors_of(proc.pid))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def steady_clock(ring: AudioRing, skip_s: float = 1.0):
    """A line through a ring's arrival stamps: the capture clock without the stamps' +-10 ms jitter."""
    idx = np.arange(int(skip_s * 16000), ring.total, 160)
    t = np.array([ring.arrival_time(int(i)) for i in idx])
    keep = np.ones(len(idx), bool)
    for _ in range(3):  # ignore the stream's start-up burst and other outliers
        a, b = np.polyfit(idx[keep], t[keep], 1)
        residual = t - (a * idx + b)
        keep = np.abs(residual - np.median(residual[keep])) < 0.010
    assert keep.mean() > 0.8
    return lambda s: a * np.asarray(s, dtype=float) + b


def os_thread_names() -> list[str]:
    """This process's threads as the OS names them (what `top -H` shows)."""
    names = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            names.append((task / "comm").read_text().strip())
    return names


def test_the_voice_comes_back_delayed_to_meet_the_lips(pulse_server, speech_wav, engine, astronaut_png, monkeypatch):
    before = defaults(pulse_server)
    camera_recorder.register()
    clock = FrameClock(30.0)
    renderer = FrameRenderer(Wav2LipLipSync(engine), Portrait.load(astronaut_png), SIZE, clock)
    ring, back = AudioRing(seconds=30), AudioRing(seconds=30)
    mic, listener = MicrophoneSource(ring, device="pulse"), MicrophoneSource(back, device="pulse")
    cam = VirtualCameraSink(SIZE.width, SIZE.height, clock.fps, backend=camera_recorder.BACKEND)
    vmic = VirtualMicrophone(ring, initial_delay_s=clock.lookahead_s + 0.04)
    pipe = LivePipeline(renderer, [cam], ring, clock, on_frame=vmic.observe_frame)
    pipe.pace = vmic.frame_due  # each frame leaves when the voice it shows does
    runner = threading.Thread(target=pipe.run)
    reported: list[tuple[float, float]] = []  # (time, the delay the virtual microphone reports)
    with vmic:
        monkeypatch.setenv("PULSE_SOURCE", "test_speaker.monitor")  # the test microphone
        mic.start()
        monkeypatch.setenv("PULSE_SOURCE", SOURCE)  # a call app listening to Avatar Cam Microphone
        listener.start()
        runner.start()
        try:
            time.sleep(2.0)
            player = pulse_server.play(speech_wav)
            while player.poll() is None or len(reported) < 2 or reported[-1][0] < reported[0][0] + 7:
                reported.append((time.monotonic(), vmic.delay_s))
                time.sleep(0.02)
            status = vmic.status()
            threads = os_thread_names()
        finally:
            pipe.stop()
            runner.join(timeout=10)
            mic.stop()
            listener.stop()
            cam.close()
    assert not {SINK, SOURCE} & device_names(pulse_server)
    assert defaults(pulse_server) == before
    assert status["state"] == "running" and status["underruns"] == 0, status
    # `top -H` says which thread spends the CPU: the busy ones carry their names into the OS.
    assert {"ac-frames", "ac-mouths", "ac-sender", "ac-mic-in", "ac-mic-out"} <= set(threads), threads

    x, y = ring.read(0, ring.total), back.read(0, back.total)
    heard, left = steady_clock(ring), steady_clock(back)
    voiced = np.flatnonzero(np.abs(x) > 0.05)
    # The delay follows the frames' measured latency. The first moving mouths retune it (idle frames skip
    # inference and leave earlier), and the playout catches up in the next pause: measure after that.
    windows = voice_windows(x, y, start=int(voiced[0]) + 2 * 16000)
    assert len(windows) >= 6
    similar = np.array([c for _, _, c in windows])
    # The same voice came out. (A window that straddles a re-alignment, a few ms of silence slipped into a
    # pause, is compared at one lag on both sides of it, so it matches less well.)
    assert np.mean(similar > 0.9) >= 0.9 and similar.min() > 0.7, similar
    when, what = np.array(reported).T
    errors = []  # ...delayed by the amount the virtual microphone reported at the time
    for s, j, _ in windows:
        out = float(left(j))
        errors.append(out - float(heard(s)) - what[min(np.searchsorted(when, out), len(when) - 1)])
    errors = np.abs(errors)
    # On a shared 2-core machine an audio thread starved for a moment can throw one phrase off until the
    # loop catches up, so: typically within 10 ms, and never grossly off.
    assert np.median(errors) < 0.010 and np.mean(errors < 0.010) >= 0.7 and errors.max() < 0.05, errors

    # The frames showing that voice left the camera when the voice left the microphone: paced to the playout,
    # give or take the few frames drawn later than the delay allows (a loaded machine makes more of them).
    recorder = camera_recorder.RecordingCamera.instances[-1]
    assert len(recorder.times) == len(pipe.stats.records)
    centres, found = [w[0] for w in windows], [w[1] for w in windows]
    offsets = np.array([float(left(np.interp(r.audio_time * 16000, centres, found))) - sent
                        for r, sent in zip(pipe.stats.records, recorder.times, strict=True)
                        if r.index >= 0 and r.inferred and centres[0] <= r.audio_time * 16000 <= centres[-1]])
    assert len(offsets) > 40
    print("voice - frame offsets ms p5/p50/p95:", np.round(1000 * np.percentile(offsets, [5, 50, 95]), 1))
    assert np.median(np.abs(offsets)) < 0.010, np.percentile(offsets, [5, 50, 95])
    assert np.percentile(np.abs(offsets), 95) < 0.050, np.percentile(offsets, [5, 50, 95])


def test_windows_and_macos_find_a_virtual_cable_or_say_how_to_get_one(monkeypatch):
    import sounddevice as sd

    devices = [{"index": 0, "name": "Speakers (Realtek)", "max_output_channels": 2},
               {"index": 1, "name": "CABLE Input (VB-Audio Virtual Cable)", "max_output_channels": 2},
               {"index": 2, "name": "BlackHole 2ch", "max_output_channels": 2}]
    monkeypatch.setattr(sd, "query_devices", lambda *a, **k: devices)
    assert find_virtual_cable("Windows")[:2] == (1, "CABLE Input (VB-Audio Virtual Cable)")
    assert "CABLE Output" in find_virtual_cable("Windows")[2]
    assert find_virtual_cable("Darwin") == (2, "BlackHole 2ch", "BlackHole 2ch")
    devices[1:] = []
    with pytest.raises(VirtualMicError, match="no virtual audio cable") as err:
        find_virtual_cable("Windows")
    assert "VB-CABLE" in err.value.hint
    with pytest.raises(VirtualMicError) as err:
        find_virtual_cable("Darwin")
    assert "BlackHole" in err.value.hint


def test_without_a_sound_server_the_errors_say_what_to_do(monkeypatch, tmp_path):
    from avatar_cam.bench.av_sync import av_sync_bench
    from avatar_cam.errors import AvatarCamError

    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/no-server-here")
    with pytest.raises(VirtualMicError) as err:
        VirtualMicrophone(AudioRing()).start()
    assert "pactl info" in err.value.hint
    with pytest.raises(AvatarCamError, match="needs a PulseAudio or PipeWire sound server") as err:
        av_sync_bench(seconds=1)
    assert "pulseaudio" in err.value.hint


def test_bench_av_sync_measures_voice_against_lips(pulse_server, astronaut_png, capsys):
    import argparse
    import json

    from avatar_cam.bench import av_sync

    parser = argparse.ArgumentParser()
    av_sync.register(parser.add_subparsers())
    # The Lite engine draws a mouth for every frame in about a millisecond, so nearly every frame shows its own
    # mouth whatever else the machine is doing and the offsets measure the pacing. (Wav2Lip at a mouth per frame on a
    # busy CI machine showed its own mouth on only 14 of 127 frames: the others showed an older mouth, which says
    # how slow the machine was, not whether the bench measures.)
    args = parser.parse_args(["av-sync", "--seconds", "5", "--size", "320x180", "--json", "--engine", "lite",
                              "--photo", str(astronaut_png)])
    assert args.func(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["engine"] == "lite" and r["frames"] > 40 and r["span_s"] > 2
    assert r["voice_similarity_p5"] > 0.8
    assert abs(r["voice_delay_ms_p50"] - r["delay_ms"]) < 15
    # Frames that show their own mouth leave with their voice to a few ms (a frame sent unpaced would be ~200 ms
    # early).
    assert r["own_mouth_frames"] > r["frames"] / 2 and r["own_mouth_offset_ms_p50"] < 12, r
    assert r["offset_ms_p50"] < 100, r
    for key in ("offset_ms_p95", "drift_ms_per_hour", "drift_ms_per_hour_stderr", "frame_latency_ms_p5_p50_p95"):
        assert key in r
    assert 1 < r["cpu_pct"] <= 100 * os.cpu_count()  # this process's CPU while speaking, in % of one core
    assert not {SINK, SOURCE, "avatar_cam_bench_speaker"} & device_names(pulse_server)
