""""Avatar Cam Microphone" on a starved machine: when its output thread keeps missing the sound server's deadline
(the voice breaks up), it plays larger blocks through a deeper buffer. On a real PulseAudio server; the starving is
a sleep in the output thread (what a busy CPU or an emulator does to it), the one thing stood in for."""

from __future__ import annotations

import time

import numpy as np
from helpers import eventually

from avatar_cam.audio.ring import AudioRing
from avatar_cam.vmic.buffering import OutputBuffering
from avatar_cam.vmic.microphone import VirtualMicrophone


def test_the_buffer_grows_only_when_the_voice_keeps_breaking_up():
    b = OutputBuffering(block_ms=10, buffer_s=0.1)
    for t in (0.0, 30.0, 60.0, 90.0, 120.0, 150.0):  # one breakup every half minute: a hiccup, not a pattern
        b.underflow(now=t)
        assert not b.due(now=t)
    for t in (200.0, 201.0, 202.0, 203.0, 204.0):  # five in ten seconds
        b.underflow(now=t)
    assert b.due(now=204.0)
    assert not b.due(now=215.0)  # long ago now
    b.grow()
    assert (b.block_ms, b.buffer_s) == (20.0, 0.2) and not b.due(now=215.0)  # the count starts again
    for _ in range(3):
        for t in range(5):
            b.underflow(now=300.0 + t)
        b.grow()
    assert (b.block_ms, b.buffer_s) == (40.0, 0.4) and b.underflows == 26
    for t in range(5):
        b.underflow(now=400.0 + t)
    assert not b.due(now=404.0)  # nothing more to give


def test_a_starved_output_thread_gets_a_deeper_buffer_and_the_voice_plays_on(pulse_server):
    ring = AudioRing(seconds=30)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)
    with VirtualMicrophone(ring, initial_delay_s=0.3) as vmic:
        assert vmic.status()["buffer_ms"] == 100
        render, calls = vmic.playout.render, [0]
        starving = [True]

        def starved_render(n, play_time):
            calls[0] += 1
            if starving[0] and calls[0] % 4 == 0:
                time.sleep(0.25)  # longer than the whole buffer: the server runs dry
            return render(n, play_time)

        vmic.playout.render = starved_render
        t_end = time.monotonic() + 20
        while time.monotonic() < t_end and vmic.status()["buffer_ms"] == 100:
            ring.write(tone[:1600])  # the microphone keeps talking
            vmic.check()  # the daemon's watchdog
            time.sleep(0.1)
        status = vmic.status()
        assert status["breakups"] >= 5, status
        assert status["buffer_ms"] == 200 and status["block_ms"] == 20.0, status
        assert status["state"] == "running", status
        starving[0] = False
        before = calls[0]

        def plays_on() -> bool:
            ring.write(tone[:1600])
            vmic.check()
            return calls[0] > before + 20

        assert eventually(plays_on, timeout=5.0)  # the reopened stream's callbacks keep coming
        assert vmic.status()["state"] == "running"
