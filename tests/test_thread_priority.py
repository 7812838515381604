"""The camera's threads run ahead of ordinary work (thread_priority.TimeKeeper): directly where the user may, through
a real rtkit where not, at normal priority (and saying how to fix it) where neither; and they hand the priority
back when a frame runs long, so a slow machine is never starved by them."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rtkit_bus

from avatar_cam.thread_priority import AWAKE_S, LONG_FRAME_S, TimeKeeper

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's scheduler")
REPO = Path(__file__).resolve().parent.parent
RR, OTHER, RESET_ON_FORK = os.SCHED_RR, os.SCHED_OTHER, os.SCHED_RESET_ON_FORK


def may_set_realtime() -> bool:
    def probe(out: list) -> None:
        try:
            os.sched_setscheduler(0, RR | RESET_ON_FORK, os.sched_param(1))
            out.append(True)
            os.sched_setscheduler(0, OTHER | RESET_ON_FORK, os.sched_param(0))
        except PermissionError:
            out.append(False)

    out: list[bool] = []
    t = threading.Thread(target=probe, args=(out,))
    t.start()
    t.join()
    return out[0]


direct = pytest.mark.skipif(not may_set_realtime(), reason="this user may not set a real-time priority itself "
                                                           "(root or CAP_SYS_NICE); CI runs as root")


def on_a_thread(fn):
    """fn() on a thread of its own (a real-time priority must not stay with the test's own thread)."""
    out: dict = {}

    def body() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out["result"]


def policy() -> int:
    return os.sched_getscheduler(0) & ~RESET_ON_FORK


def burn(seconds: float) -> None:
    """Busy on this thread's CPU clock for `seconds`, without sleeping."""
    end = time.thread_time() + seconds
    x = np.ones(1000)
    while time.thread_time() < end:
        x = np.sqrt(x + 1.0)


@direct
def test_the_camera_thread_runs_ahead_of_ordinary_work_and_threads_it_starts_do_not():
    def body():
        keeper = TimeKeeper()
        mine = (keeper.how, policy(), os.sched_getparam(0).sched_priority)
        child: list[int] = []
        t = threading.Thread(target=lambda: child.append(policy()))  # e.g. the "mouths" thread it starts
        t.start()
        t.join()
        keeper.release()
        return mine, child[0], policy(), keeper.how

    (how, pol, prio), child, after, how_after = on_a_thread(body)
    assert how == "real-time" and pol == RR and prio >= 1
    assert child == OTHER  # SCHED_RESET_ON_FORK: inference, audio and the rest stay ordinary
    assert after == OTHER and how_after == ""


@direct
def test_work_that_may_run_long_runs_at_normal_priority_and_the_priority_comes_back():
    """A change the frame thread builds itself (when another landed first) may take half a second: never at
    real-time priority (under rtkit's cap, 0.2 s of it kills the process)."""
    def body():
        keeper = TimeKeeper()
        with keeper.ordinary():
            during = policy()
        after = (keeper.how, policy())
        keeper.release()
        return during, after

    during, after = on_a_thread(body)
    assert during == OTHER and after == ("real-time", RR)


@direct
def test_a_frame_that_runs_long_hands_the_priority_back(caplog):
    def body():
        keeper = TimeKeeper()
        keeper.after_frame()
        for _ in range(5):  # ordinary frames keep it
            burn(0.005)
            time.sleep(0.02)
            keeper.after_frame()
        kept = (keeper.how, policy())
        burn(LONG_FRAME_S * 1.6)  # a frame far too slow for the size on this machine
        keeper.after_frame()
        return kept, keeper.how, policy()

    with caplog.at_level(logging.WARNING, logger="avatar_cam.thread_priority"):
        kept, how, pol = on_a_thread(body)
    assert kept == ("real-time", RR)
    assert how == "" and pol == OTHER
    assert "goes back to normal priority: a frame took" in caplog.text


@direct
def test_a_thread_that_never_sleeps_sleeps_a_moment_and_keeps_its_priority():
    """rtkit's grant kills the process when a real-time thread runs 0.2 s without sleeping: a frame thread that
    is catching up (frame after frame, no waiting) must sleep now and then."""
    def switches() -> int:
        status = Path(f"/proc/self/task/{threading.get_native_id()}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt")))

    def body():
        keeper = TimeKeeper()
        before = switches()
        for _ in range(round(8 * AWAKE_S / 0.005)):  # 8x AWAKE_S of CPU, in 5 ms frames that never wait
            burn(0.005)
            keeper.after_frame()
        return switches() - before, keeper.how

    slept, how = on_a_thread(body)
    assert how == "real-time"
    assert slept >= 4  # at least one nap every AWAKE_S of CPU (the run is 8x that)


CHILD = """
import json, logging, os, resource, threading
logging.basicConfig(level=logging.INFO, format="%(message)s")
from avatar_cam.thread_priority import TimeKeeper
out = {}
def body():
    keeper = TimeKeeper()
    out.update(how=keeper.how, policy=os.sched_getscheduler(0), rttime=resource.getrlimit(resource.RLIMIT_RTTIME))
    keeper.release()
    out["after"] = os.sched_getscheduler(0)
t = threading.Thread(target=body)
t.start()
t.join()
print(json.dumps(out))
"""


def run_unprivileged(bus_address: str) -> tuple[dict, str]:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus_address, "PYTHONPATH": str(REPO)}
    r = rtkit_bus.without_cap_sys_nice([sys.executable, "-c", CHILD], env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.fixture
def system_bus(tmp_path):
    if (why := rtkit_bus.missing()) is not None:
        pytest.skip(why)
    with rtkit_bus.system_bus_with_rtkit(tmp_path) as address:
        yield address


def test_an_ordinary_user_gets_it_from_rtkit(system_bus):
    out, _ = run_unprivileged(system_bus)
    assert out["how"] == "real-time (rtkit)"
    assert out["policy"] == RR | RESET_ON_FORK
    # rtkit's condition, which the kernel enforces: killed past 0.2 s of real-time CPU without sleeping
    assert out["rttime"] == [200_000, 200_000]
    assert out["after"] == OTHER | RESET_ON_FORK  # and it can be handed back without privilege


def test_without_rights_or_rtkit_the_camera_runs_at_normal_priority_and_the_log_says_how_to_fix_it(tmp_path):
    if (why := rtkit_bus.missing()) is not None and "system bus already runs" not in why:
        pytest.skip(why)
    out, log = run_unprivileged(f"unix:path={tmp_path}/no-bus-here")
    assert out["how"] == "" and out["policy"] == OTHER
    assert "normal priority" in log and "apt install rtkit" in log


@direct
def test_the_live_pipeline_draws_on_a_real_time_thread(astronaut_png):
    """The frame thread keeps time while it runs and gives it back when it stops; the camera's frames flow."""
    import camera_recorder

    from avatar_cam.audio.ring import AudioRing
    from avatar_cam.lipsync.lite import LiteLipSync
    from avatar_cam.live.frame_clock import FrameClock
    from avatar_cam.live.pipeline import LivePipeline
    from avatar_cam.live.renderer import FrameRenderer
    from avatar_cam.outputs.camera import VirtualCameraSink
    from avatar_cam.video.compositor import OutputFormat
    from avatar_cam.video.portrait import Portrait

    cams = camera_recorder.register()
    clock = FrameClock(30.0)
    renderer = FrameRenderer(LiteLipSync(), Portrait.load(astronaut_png), OutputFormat(320, 180), clock)
    ring = AudioRing(seconds=10)
    cam = VirtualCameraSink(320, 180, 30.0, backend=camera_recorder.BACKEND)
    pipe = LivePipeline(renderer, [cam], ring, clock)
    seen: dict = {}

    def frames() -> None:
        seen["before"] = policy()
        pipe.run()
        seen["after"] = policy()

    runner = threading.Thread(target=frames, name="frames")
    runner.start()
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            ring.write(np.zeros(800, np.float32))  # 50 ms of silence every 50 ms: the idle face
            time.sleep(0.05)
        seen["during"] = pipe.priority
    finally:
        pipe.stop()
        runner.join(10)
        cam.close()
    assert seen["before"] == OTHER and seen["during"] == "real-time" and seen["after"] == OTHER
    assert len(cams.instances[-1].times) > 20
