""""Avatar Cam Microphone" on a starved machine: when its output thread misses the sound server's deadline the
voice breaks up, and the status says so (`virtual_mic.breakups`), while the voice plays on. On a real PulseAudio
server; the starving is a sleep in the output thread (what a busy CPU or an emulator does to it), the one thing
stood in for."""

from __future__ import annotations

import time

import numpy as np
from helpers import eventually

from avatar_cam.audio.ring import AudioRing
from avatar_cam.vmic.microphone import VirtualMicrophone


def test_a_starved_output_thread_shows_as_breakups_and_the_voice_plays_on(pulse_server):
    ring = AudioRing(seconds=30)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(1600) / 16000)).astype(np.float32)
    with VirtualMicrophone(ring, initial_delay_s=0.3) as vmic:
        render, calls, starving = vmic.playout.render, [0], [False]

        def starved_render(n, play_time):
            calls[0] += 1
            if starving[0] and calls[0] % 4 == 0:
                time.sleep(0.25)  # longer than the whole buffer: the server runs dry
            return render(n, play_time)

        vmic.playout.render = starved_render

        def talk(seconds: float) -> None:
            for _ in range(round(seconds * 10)):
                ring.write(tone)  # the microphone keeps talking
                vmic.check()  # the daemon's watchdog
                time.sleep(0.1)

        talk(2.0)
        assert vmic.status()["breakups"] <= 1, vmic.status()  # a quiet machine (at most the stream's first block)
        starving[0] = True
        talk(3.0)
        status = vmic.status()
        assert status["breakups"] >= 5 and status["state"] == "running", status
        starving[0] = False
        before = calls[0]
        assert eventually(lambda: calls[0] > before + 20, timeout=5.0)  # the output keeps being fed
        assert vmic.status()["state"] == "running"
