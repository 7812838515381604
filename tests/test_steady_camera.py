"""The camera's cadence never depends on inference: a slow engine behind the real pipeline (real OpenVINO Wav2Lip
on seeded random weights, espeak-ng speech played in real time, the real pyvirtualcam API with the recording
backend). The engine is made slow on purpose by sleeping after each inference: that stands in for a busy or slow
machine, which a test cannot order up."""

from __future__ import annotations

import hashlib
import threading
import time

import camera_recorder
import numpy as np
import pytest

from avatar_cam.audio.ring import SAMPLE_RATE, AudioRing
from avatar_cam.audio.sources import FileSource, load_audio
from avatar_cam.lipsync.wav2lip import Wav2LipLipSync
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.mouths import MAX_AGE_S, MIN_INFERENCE_SHARE
from avatar_cam.live.performance import performance
from avatar_cam.live.pipeline import LivePipeline
from avatar_cam.live.renderer import FrameRenderer
from avatar_cam.outputs.camera import VirtualCameraSink
from avatar_cam.video.compositor import OutputFormat
from avatar_cam.video.idle_motion import IdleSettings
from avatar_cam.video.portrait import Portrait
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW
from avatar_cam.wav2lip.engine import Wav2LipEngine

SIZE = OutputFormat(640, 360)
FPS = 30.0
DELAY = 0.26  # the voice's delay in the paced test


class SlowWav2Lip(Wav2LipLipSync):
    """The real engine, then a sleep of `slow_s` per inference while `slow_s` > 0 (the test changes it)."""

    def __init__(self, engine, slow_s: float):
        super().__init__(engine)
        self.slow_s = slow_s

    def lower_faces(self, mels):
        out = super().lower_faces(mels)
        time.sleep(self.slow_s)
        return out


def spend_cpu(seconds: float) -> None:
    """Spend about `seconds` of this thread's CPU (hashing releases the GIL: other threads run meanwhile)."""
    block, end = b"x" * 65536, time.thread_time() + seconds
    while time.thread_time() < end:
        hashlib.sha256(block).digest()


@pytest.fixture(scope="module")
def engine(random_checkpoint, tmp_path_factory):
    return Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path_factory.mktemp("cache"),
                                         first_row=MOUTH_FIRST_ROW)


def run_live(lipsync, astronaut_png, audio: np.ndarray, seconds: float, on_way=None, pace=None, mode="smooth"):
    """The pipeline fed `audio` in real time for `seconds`; `on_way(t, pipeline)` is called every 0.1 s on this
    thread."""
    cams = camera_recorder.register()
    clock = FrameClock(FPS)
    renderer = FrameRenderer(lipsync, Portrait.load(astronaut_png), SIZE, clock, idle=IdleSettings.off())
    ring = AudioRing(seconds=60)
    cam = VirtualCameraSink(SIZE.width, SIZE.height, FPS, backend=camera_recorder.BACKEND)
    pipe = LivePipeline(renderer, [cam], ring, clock, performance=performance(mode))
    if pace is not None:
        pipe.pace = pace(ring)
    source = FileSource(audio, ring, realtime=True)
    runner = threading.Thread(target=pipe.run, name="frames")
    runner.start()
    source.start()
    t0 = time.monotonic()
    try:
        while (t := time.monotonic() - t0) < seconds:
            if on_way is not None:
                on_way(t, pipe)
            time.sleep(0.1)
    finally:
        pipe.stop()
        runner.join(10)
        source.stop()
        cam.close()
    return pipe, cams.instances[-1], clock


@pytest.fixture(scope="module")
def talking(speech_wav) -> np.ndarray:
    """Speech with short pauses, about 14 s."""
    speech = load_audio(speech_wav)
    return np.concatenate([speech, speech])


def test_a_slow_engine_never_costs_a_camera_frame(engine, astronaut_png, talking):
    lipsync = SlowWav2Lip(engine, slow_s=0.08)  # 80 ms more per inference: a machine that cannot keep up

    def recover(t: float, _pipe) -> None:
        if t > 8.0:
            lipsync.slow_s = 0.0  # the load goes away

    lipsync_slowness = lipsync.slow_s
    pipe, cam, clock = run_live(lipsync, astronaut_png, talking, 13.0, on_way=recover)
    live = [r for r in pipe.stats.records if r.index >= 0]
    indices = [r.index for r in live]
    # Every frame the audio clock asked for left, in order, each once: none skipped, none repeated.
    assert indices == list(range(indices[0], indices[-1] + 1))
    assert len(cam.times) == len(pipe.stats.records)
    assert len(live) >= 0.9 * 12.0 * FPS
    # ...and on the audio clock: a frame leaves at its slot (the moment its audio arrived plus a short wait for its
    # mouth, never more than a frame period), not when inference is done.
    waits = np.array([r.slot - r.ready for r in live])
    assert waits.max() <= 1.0 / FPS
    # A frame shows the newest mouth there is: never one from its future, never an old one.
    talking_frames = [r for r in live if r.inferred]
    assert len(talking_frames) > 100
    assert all(r.mouth_index <= r.index for r in talking_frames)
    assert max(r.index - r.mouth_index for r in talking_frames) <= MAX_AGE_S * FPS
    # While slow, mouths came at the rate the engine allowed; once the load went, the rate came back up.
    def mouth_hz(frames):
        return len({r.mouth_index for r in frames}) * FPS / max(len(frames), 1)

    slow = [r for r in talking_frames if r.audio_time < 7.0]
    fast = [r for r in talking_frames if r.audio_time > 9.5]
    assert mouth_hz(slow) <= 1.1 / lipsync_slowness, mouth_hz(slow)
    assert mouth_hz(fast) > 1.2 * mouth_hz(slow), (mouth_hz(slow), mouth_hz(fast))


def test_changes_mid_inference_cost_no_frame(engine, astronaut_png, talking):
    """The tray's Performance menu, or a new photo, while a slow inference runs: the frame thread goes on (it used
    to wait for the inference to end: up to half a second here, 15 frames). The old "mouths" thread is told to
    stop and ends by itself; the new photo's engine takes over and the old face's last mouth is dropped."""
    lipsync = SlowWav2Lip(engine, slow_s=0.5)  # the mouths thread is inside an inference nearly all the time
    switched: list[float] = []

    def new_photo(pipe) -> None:
        prepared = pipe.renderer.prepare(portrait=Portrait.load(astronaut_png), lipsync=SlowWav2Lip(engine, 0.5))
        pipe.call_between_frames(lambda: pipe.renderer.use(prepared))

    changes = [lambda pipe: pipe.request_performance(performance("balanced")), new_photo,
               lambda pipe: pipe.request_performance(performance("smooth"))]

    def switch(t: float, pipe) -> None:
        if len(switched) < len(changes) and t > 2.0 + 1.5 * len(switched):
            changes[len(switched)](pipe)
            switched.append(time.monotonic())

    pipe, cam, clock = run_live(lipsync, astronaut_png, talking, 7.0, on_way=switch)
    live = [r for r in pipe.stats.records if r.index >= 0]
    indices = [r.index for r in live]
    assert len(switched) == 3 and pipe.performance.name == "smooth" and pipe.renderer.generation == 1
    assert indices == list(range(indices[0], indices[-1] + 1))  # none skipped
    # The camera never paused: no gap between two frames sent of more than a few frame periods (a frame thread
    # waiting for the inference in progress: 0.3-1 s; room left for a loaded test machine's scheduler).
    gaps = np.diff(cam.times)
    assert gaps.max() < 0.2, gaps.max()


def test_with_the_voice_paced_each_frame_leaves_with_the_voice_it_shows(engine, astronaut_png, talking):
    """Avatar Cam Microphone paces frames (`LivePipeline.pace`: when the voice at an audio time plays); here the
    voice plays 0.26 s after it was heard (longer than a frame's audio and mouth take, as the measured delay is).
    With a slow engine each frame still leaves when its voice plays."""
    lipsync = SlowWav2Lip(engine, slow_s=0.06)

    def pace(ring):
        return lambda audio_time: ring.arrival_time(round(audio_time * SAMPLE_RATE)) + DELAY

    pipe, cam, clock = run_live(lipsync, astronaut_png, talking[: 8 * SAMPLE_RATE], 7.0, pace=pace)
    live = [r for r in pipe.stats.records if r.index >= 0 and r.heard is not None]
    assert len(live) > 150
    due = np.array([r.heard + DELAY for r in live])
    on_time = np.array([r.drawn < d for r, d in zip(live, due, strict=True)])  # (a loaded machine draws some late)
    assert on_time.mean() > 0.8
    off = np.array([r.emitted for r in live])[on_time] - due[on_time]
    assert np.percentile(np.abs(off), 50) < 0.005 and np.percentile(np.abs(off), 95) < 0.02, \
        np.percentile(np.abs(off), [50, 95, 100])
    assert [r.index for r in live] == sorted(r.index for r in live)
    assert any(r.inferred for r in live)


def test_the_budget_counts_the_whole_process(random_checkpoint, tmp_path, astronaut_png, talking):
    """Balanced keeps the whole process within 0.75 of a core: when something else in the process takes CPU (here
    a thread that hashes, standing in for drawing, audio or a camera backend grown costly), inference gets less,
    and it gets its share back when that stops."""
    one_thread = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path / "cache",
                                               first_row=MOUTH_FIRST_ROW, threads=1)  # as balanced runs it
    busy, allowed = threading.Event(), {}

    def busy_thread():
        while busy.is_set():
            spend_cpu(0.05)

    def on_way(t: float, pipe) -> None:
        if pipe.mouths is None:
            return
        # The CPU given to inference (mouths a second x the CPU one costs now): what the budget shares out. (The
        # rate alone also follows the cost of an inference, which moves by half within seconds on this machine.)
        share = pipe.mouths.target_hz() * pipe.mouths.inference_cpu_s()
        if 3.0 < t < 5.0:
            allowed["before"] = share
        elif 5.0 <= t < 7.5 and not busy.is_set():
            busy.set()
            threading.Thread(target=busy_thread, daemon=True).start()
        elif t >= 7.5 and busy.is_set():  # (2.5 s busy: more than the 2 s the budget averages over)
            allowed["busy"] = share
            busy.clear()
        allowed["after"] = share

    try:
        run_live(Wav2LipLipSync(one_thread), astronaut_png, talking, 13.5, on_way=on_way, mode="balanced")
    finally:
        busy.clear()
    # A core's worth of hashing (half of one at least, on a loaded machine) leaves inference its floor share:
    # a quarter of the budget instead of what drawing and audio left it (most of it).
    budget = performance("balanced").cpu_budget
    assert 0.5 * budget < allowed["before"] <= budget, allowed
    assert allowed["busy"] < 0.6 * allowed["before"], allowed
    # (its floor, as the rate was set at the last request, times what an inference costs at this moment)
    assert allowed["busy"] >= 0.6 * MIN_INFERENCE_SHARE * budget, allowed
    assert allowed["after"] > 0.85 * allowed["before"], allowed  # 6 s after: its share is back


class SlowSink:
    """A sink that takes 50 ms a frame on the frame thread: drawing and sending at most 20 frames a second, for a
    30 fps camera. It stands in for a machine too slow or too busy to draw at the camera's rate."""

    def send(self, frame) -> None:
        time.sleep(0.05)

    def close(self) -> None:
        pass


def test_when_drawing_cannot_keep_up_the_camera_skips_ahead_and_stays_with_the_voice(astronaut_png, talking):
    """Without a bound, each frame waited its turn and the picture fell further and further behind the voice (an
    emulated guest: 15 s behind after a minute, and Avatar Cam Microphone's delay followed)."""
    from avatar_cam.lipsync.lite import LiteLipSync
    from avatar_cam.live.pipeline import MAX_BACKLOG_S

    clock = FrameClock(FPS)
    renderer = FrameRenderer(LiteLipSync(), Portrait.load(astronaut_png), SIZE, clock, idle=IdleSettings.off())
    ring = AudioRing(seconds=60)
    pipe = LivePipeline(renderer, [SlowSink()], ring, clock, performance=performance("balanced"))
    source = FileSource(talking, ring, realtime=True)
    runner = threading.Thread(target=pipe.run, name="frames")
    runner.start()
    source.start()
    time.sleep(8.0)
    pipe.stop()
    runner.join(10)
    source.stop()
    live = [r for r in pipe.stats.records if r.index >= 0]
    indices = [r.index for r in live]
    assert indices == sorted(set(indices)) and pipe.skipped > 0  # in order, never twice; some never drawn
    assert len(live) > 8.0 * 15  # still ~20 frames a second: the camera runs as fast as it can
    # The lag (sound heard -> frame sent) stays bounded: after 8 s it was 2.9 s and growing without the bound.
    lag = np.array([r.emitted - r.heard for r in live if r.heard is not None and r.emitted > live[-1].emitted - 3.0])
    assert np.percentile(lag, 95) < MAX_BACKLOG_S + clock.lookahead_s + 0.2, np.percentile(lag, 95)
