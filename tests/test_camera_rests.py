"""The camera rests while no app reads it, and wakes when one opens it: real inotify, real /proc, real programs
opening the node, the real pipeline (OpenVINO Wav2Lip on seeded random weights, espeak-ng speech in real time,
the real pyvirtualcam API with the recording backend).

This machine has no v4l2loopback device: a plain file stands in for its node. inotify reports opens and closes
of both alike, and /proc shows who holds either."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import camera_recorder
import pytest
from helpers import wait_for

from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import FileSource, load_audio
from avatar_cam.lipsync.wav2lip import Wav2LipLipSync
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.performance import performance
from avatar_cam.live.pipeline import RESTING_FRAME_S, LivePipeline
from avatar_cam.live.renderer import FrameRenderer
from avatar_cam.outputs.camera import VirtualCameraSink
from avatar_cam.outputs.readers import CameraReaders, processes_holding
from avatar_cam.video.compositor import OutputFormat
from avatar_cam.video.idle_motion import IdleSettings
from avatar_cam.video.portrait import Portrait
from avatar_cam.wav2lip.arch import MOUTH_FIRST_ROW
from avatar_cam.wav2lip.engine import Wav2LipEngine

FPS = 30.0


class App:
    """Another program holding `node` open, as a call app holds the camera, until `leave()`."""

    def __init__(self, node):
        code = "import sys, time\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\ntime.sleep(120)"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(node)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "open"

    def leave(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def node(tmp_path):
    path = tmp_path / "video10"
    path.write_bytes(b"")
    return path


def test_the_programs_holding_a_node_are_counted_but_never_us(node):
    with open(node, "rb"):  # we hold it too (the camera's own writer does): not a reader
        assert processes_holding(str(node)) == 0
        first, second = App(node), App(node)
        try:
            assert processes_holding(str(node)) == 2
            first.leave()
            assert processes_holding(str(node)) == 1
        finally:
            first.leave()
            second.leave()
        assert processes_holding(str(node)) == 0


def test_an_app_opening_the_camera_is_seen_at_once_and_its_leaving_after_a_grace(node):
    readers = CameraReaders(str(node), grace_s=1.0)
    assert readers.start()
    try:
        assert readers.readers == 0 and not readers.watched
        app = App(node)
        opened = time.monotonic()
        wait_for(lambda: readers.watched, "the open seen", timeout=2.0)
        assert time.monotonic() - opened < 0.5  # (inotify: not a poll)
        wait_for(lambda: readers.readers == 1, "the app counted", timeout=2.0)
        app.leave()
        wait_for(lambda: readers.readers == 0, "the app gone", timeout=2.0)
        assert readers.watched  # a grace: an app listing cameras closes one to open another
        wait_for(lambda: not readers.watched, "resting after the grace", timeout=3.0)
    finally:
        readers.stop()
    assert readers.watched  # stopped: it can no longer tell, so the camera keeps its rate


class WatchedCamera:
    """The product's camera sink (the recording backend) with the product's reader watch on the stand-in node."""

    def __init__(self, node):
        self.cam = VirtualCameraSink(640, 360, FPS, backend=camera_recorder.BACKEND)
        self.readers = CameraReaders(str(node), grace_s=0.5)
        assert self.readers.start()

    @property
    def watched(self) -> bool:
        return self.readers.watched

    def send(self, frame) -> None:
        self.cam.send(frame)

    def close(self) -> None:
        self.readers.stop()
        self.cam.close()


def test_the_camera_rests_while_no_app_reads_it_and_wakes_with_lips_when_one_does(random_checkpoint, tmp_path,
                                                                                   astronaut_png, speech_wav, node):
    recorded = camera_recorder.register()
    engine = Wav2LipEngine.from_checkpoint(random_checkpoint, cache_dir=tmp_path / "cache", first_row=MOUTH_FIRST_ROW)
    clock = FrameClock(FPS)
    renderer = FrameRenderer(Wav2LipLipSync(engine), Portrait.load(astronaut_png), OutputFormat(640, 360), clock,
                             idle=IdleSettings.off())
    ring = AudioRing(seconds=60)
    camera = WatchedCamera(node)
    pipe = LivePipeline(renderer, [camera], ring, clock, performance=performance("smooth"))
    speech = load_audio(speech_wav)
    source = FileSource(speech, ring, realtime=True, loop=True)
    runner = threading.Thread(target=pipe.run, name="frames")
    runner.start()
    source.start()
    times = recorded.instances[-1].times
    try:
        time.sleep(3.0)  # talking, and nobody reads the camera
        assert not pipe.watched
        assert len(times) <= 3.0 / RESTING_FRAME_S + 1  # a frame a second, not 90
        assert len(times) >= 2  # but the device never goes stale
        assert pipe.mouths is None  # no inference for nobody
        app = App(node)
        opened = time.monotonic()
        wait_for(lambda: sum(t > opened for t in times) >= 15, "frames at the camera's rate", timeout=2.0)
        assert times[-1] - opened < 1.5  # 15 frames within ~0.5 s of the open, plus a start-up margin
        wait_for(lambda: pipe.stats.records and any(r.inferred for r in pipe.stats.records[-30:]),
                 "the lips moving again", timeout=10.0)
        app.leave()
        left = time.monotonic()
        wait_for(lambda: not pipe.watched, "resting again", timeout=3.0)
        time.sleep(2.0)
        rested = [t for t in times if t > left + 1.0]
        assert len(rested) <= 3, len(rested)
    finally:
        pipe.stop()
        runner.join(10)
        source.stop()
        camera.close()
    live = [r.index for r in pipe.stats.records if r.index >= 0]
    assert live == sorted(set(live))  # the frames that left while watched: in order, never twice
