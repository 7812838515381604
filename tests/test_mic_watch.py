"""The watchdogs' stall clocks, on a clock the test drives: the microphone's (daemon/mic_watch.py: stall
and reopen back-off) and Avatar Cam Microphone's (vmic/microphone.py: no output callbacks).

The guest (tests/guest/) found a reconnect storm: under emulation the whole process is often not scheduled
for seconds, the watchdog then saw "no sound for 1 s" and reopened a microphone that was fine, again and
again. Here the controller's real `_lost_mic` is fed looks at chosen times; the ring, the stream and the
pipeline's frame records are small stand-ins holding just what it reads (a sample count, a status, the
frames' emit times), because a real stream cannot be made to stall for exactly N seconds on demand. The
real-stream version (a microphone that runs and delivers nothing is reopened) is in test_recovery.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from avatar_cam.daemon.controller import Controller
from avatar_cam.settings import Settings

WATCH = Controller.WATCH_S


@dataclass
class Frames:
    records: list = field(default_factory=list)

    def drawn_at(self, t: float) -> None:
        self.records.append(SimpleNamespace(emitted=t))


def watched(start: float = 100.0):
    ctl = Controller(Settings(engine="lite"), persist=False)
    ring = SimpleNamespace(total=0)
    frames = Frames()
    ctl._ring, ctl._mic = ring, SimpleNamespace(status="running")
    ctl._pipeline = SimpleNamespace(stats=frames)
    ctl._mic_opened(start, 0)
    ctl._mic_retry_at = start
    return ctl, ring, frames


def look(ctl, frames, t: float, ring=None, samples: int = 0, drew: bool = True):
    """One watchdog look at time t, the frame thread having drawn (or not) just before it."""
    if drew:
        frames.drawn_at(t - 0.01)
    if ring is not None:
        ring.total += samples
    return ctl._lost_mic(t)


def test_sound_flowing_is_never_a_stall():
    ctl, ring, frames = watched()
    t = 100.0
    for _ in range(100):
        t += WATCH
        assert look(ctl, frames, t, ring, samples=4000) is None
    assert ctl._mic_fault is None


def test_silence_while_the_process_runs_is_a_stall_after_the_grace():
    ctl, ring, frames = watched()
    t, lost_at = 100.0, None
    while lost_at is None and t < 120:
        t += WATCH
        if look(ctl, frames, t) is not None:
            lost_at = t
    assert lost_at is not None and lost_at - 100.0 >= ctl.MIC_OPEN_GRACE_S
    assert lost_at - 100.0 <= ctl.MIC_OPEN_GRACE_S + 2 * WATCH
    assert "no sound from it" in ctl._mic_fault


def test_time_the_process_was_not_scheduled_is_not_silence():
    ctl, ring, frames = watched()
    t = 100.0
    for _ in range(20):  # past the grace, sound flowing
        t += WATCH
        look(ctl, frames, t, ring, samples=4000)
    # The CPU is taken from us for 5 s: the watchdog wakes late, and the frame thread drew nothing meanwhile
    # (the stream's thread was held up too, so nothing came into the ring either).
    t += 5.0
    assert look(ctl, frames, t, drew=False) is None
    # Then everything runs again and sound comes with the next look.
    t += WATCH
    assert look(ctl, frames, t, ring, samples=4000) is None
    assert ctl._mic_fault is None and ctl._mic is not None


def test_a_late_look_while_frames_were_drawn_counts_at_most_two_looks():
    ctl, ring, frames = watched()
    t = 100.0
    for _ in range(20):
        t += WATCH
        look(ctl, frames, t, ring, samples=4000)
    t += 3.0  # one look 3 s late, frames drawn meanwhile, no sound: only 2 looks' worth of silence counted
    assert look(ctl, frames, t) is None
    assert ctl._mic_quiet_s == 2 * WATCH
    for _ in range(2):  # silence goes on at the normal pace: lost once more than MIC_STALL_S has run up
        t += WATCH
        assert look(ctl, frames, t) is None
    t += WATCH
    assert look(ctl, frames, t) is not None


def reopen_attempts(ctl, ring, frames, until: float, delivers_s: float = 0.0) -> tuple[float, list[float]]:
    """Watch a silent microphone from t=100 s to `until`; each reopen gives a stream that delivers sound for
    `delivers_s`, then none. Returns the time reached and when each reopen happened."""
    t, attempts = 100.0, []
    while t < until:
        t += WATCH
        if look(ctl, frames, t) is not None:
            attempts.append(t)
            ctl._mic = SimpleNamespace(status="running")
            ctl._mic_opened(t, ring.total)
            for _ in range(round(delivers_s / WATCH)):
                t += WATCH
                look(ctl, frames, t, ring, samples=4000)
    return t, attempts


def test_reopen_attempts_back_off_and_start_again_once_sound_is_back():
    ctl, ring, frames = watched()
    # Each reopen gives a stream that delivers nothing again (what a starved CPU or a dead device does).
    t, attempts = reopen_attempts(ctl, ring, frames, until=160.0)
    # Each new stream has its grace first; beyond it, the waits double up to the cap.
    waits = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert all(b >= a - WATCH for a, b in zip(waits, waits[1:], strict=False)), waits
    assert waits[-1] >= ctl.MIC_RETRY_MAX_S - WATCH and waits[-1] <= ctl.MIC_RETRY_MAX_S + 2 * WATCH, waits
    assert len(attempts) <= 8, attempts  # not a storm: an attempt every ~3 s would have made 20
    # Sound is back, and once it has flowed for a while the next loss starts from the first wait again.
    t += WATCH
    assert look(ctl, frames, t, ring, samples=4000) is None
    assert ctl._mic_fault is None
    back = t
    while t < back + ctl.MIC_HEALTHY_S:
        t += WATCH
        assert look(ctl, frames, t, ring, samples=4000) is None
    assert ctl._mic_backoff_s == ctl.MIC_RETRY_S


def test_a_microphone_that_comes_back_and_stalls_again_is_not_reopened_every_few_seconds():
    # The emulated guest: a reopened stream delivered for a few seconds and stalled again; its "back" reset the
    # back-off, so it was reopened every ~5 s, each reopen costing 6-10 s of silence there.
    ctl, ring, frames = watched()
    _, attempts = reopen_attempts(ctl, ring, frames, until=220.0, delivers_s=4.0)  # then stalls again
    waits = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert waits[-1] >= ctl.MIC_RETRY_MAX_S, waits  # backed off to the cap, not reset by each short return
    assert len(attempts) <= 14, attempts  # 12 here; resetting at every return reopened it 23 times (every 5.25 s)


# --------------------------------------------------------------------- Avatar Cam Microphone's own watchdog


def vmic_watched():
    """A VirtualMicrophone as its watchdog sees it: an open stream (a stand-in object: only its presence is
    read) and the times of its output callbacks and of the frames drawn, set by the test."""
    from avatar_cam.audio.ring import AudioRing
    from avatar_cam.vmic.microphone import VirtualMicrophone

    vmic = VirtualMicrophone(AudioRing())
    vmic._stream = object()
    vmic._last_callback = vmic._looked_at = 100.0
    return vmic


def test_avatar_cam_microphone_counts_no_silence_while_the_process_was_not_scheduled():
    vmic = vmic_watched()
    t = 100.0
    for _ in range(4):  # callbacks come: never silent
        t += WATCH
        vmic._last_callback = vmic._last_frame = t - 0.01
        assert vmic._silence(t) == 0.0
    t += 6.0  # starved for 6 s: no callback, no frame drawn either
    assert vmic._silence(t) == 0.0  # (it used to say 6 s: more than STALL_S, and the stream was reopened)
    vmic._last_frame = t + 0.1  # the frame thread runs again, the output thread not (yet)
    t += WATCH
    assert vmic._silence(t) == WATCH
    t += 3.0  # a late look with frames drawn meanwhile: capped
    vmic._last_frame = t - 0.01
    assert vmic._silence(t) == WATCH + vmic.LOOK_CAP_S
    vmic._last_callback = t + 0.05  # a callback: silence over
    t += WATCH
    assert vmic._silence(t) == 0.0


def test_avatar_cam_microphone_still_notices_a_server_that_went_away():
    vmic = vmic_watched()
    t, silent = 100.0, 0.0
    while silent <= vmic.LOST_S:  # frames drawn, no callbacks: the server is gone
        t += WATCH
        vmic._last_frame = t - 0.01
        silent = vmic._silence(t)
    assert t - 100.0 <= vmic.LOST_S + 2 * WATCH
