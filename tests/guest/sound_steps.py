"""The guest's sound: a PulseAudio server standing in for the sound card, speech played into its speaker's
monitor (the daemon's microphone), a plain client listening to that microphone beside the daemon (the voice
probe: when the sound reached a cheap reader, to tell the sound server's delay from the daemon's). What
"Avatar Cam Microphone" plays, Chromium hears (call_page.html): no second listener takes the guest's CPU."""

from __future__ import annotations

import subprocess
import threading
import time

import numpy as np
from guest_io import EXTRA, JOB, REPORT, RESULTS, RUNTIME, autogroup, mark, product_env, sh, step

PA_CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name=test_speaker rate=48000 channels=1
set-default-sink test_speaker
set-default-source test_speaker.monitor
"""
PROBE_RATE, PROBE_BLOCK = 16000, 1600  # the probe reads 100 ms blocks of 16 kHz mono, as parec hands them over


class VoiceProbe:
    """parec on a source at 16 kHz mono: (epoch ms, rms) of every 100 ms block as it arrives. On the microphone
    (test_speaker.monitor) it also keeps the idle null sink's monitor flowing (see TESTING.md)."""

    def __init__(self, source: str = "test_speaker.monitor") -> None:
        self.source = source
        self.blocks: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.start()

    def start(self) -> None:
        """Listen (again: after a restart of the sound server, which ends parec)."""
        self.process = subprocess.Popen(
            ["parec", "-d", self.source, "--raw", "--format=s16le", f"--rate={PROBE_RATE}", "--channels=1",
             "--latency-msec=100"],
            env=product_env(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.reader = threading.Thread(target=self._read, args=(self.process,), name="voice-probe", daemon=True)
        self.reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        while (data := process.stdout.read(2 * PROBE_BLOCK)):
            x = np.frombuffer(data, np.int16).astype(np.float32) / 32768
            with self.lock:
                self.blocks.append((round(time.time() * 1000, 1), round(float(np.sqrt((x**2).mean())), 4)))

    def snapshot(self) -> list:
        with self.lock:
            return list(self.blocks)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)


def run_sound_server(log_name: str) -> tuple[subprocess.Popen, str]:
    """The PulseAudio server, answering; and its scheduling group."""
    env = product_env()
    # No real-time scheduling: under emulation its CPU-time limit would get the server killed. Instead, as a
    # desktop's sound server has (rtkit), priority: its own scheduling group (a session of its own) weighted as
    # nice -11, so the apps beside it (Chromium, the daemon) cannot starve it. The cheapest resampler, as the
    # emulated guest barely keeps up.
    server = subprocess.Popen(["pulseaudio", "--resample-method=trivial", "--realtime=no", "--high-priority=yes",
                               "--no-cpu-limit", "--exit-idle-time=-1", "--disallow-exit", "-n",
                               "-F", str(RUNTIME / "pa.pa"), f"--log-target=file:{RESULTS}/{log_name}"],
                              env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    group = autogroup(server.pid, nice=-11)
    for _ in range(100):
        if sh("pactl", "info", env=env, timeout=5)["rc"] == 0:
            break
        time.sleep(0.2)
    return server, group


def keep_sound_server(server: subprocess.Popen, probe: VoiceProbe) -> None:
    """Start the sound server again when it dies, as a desktop's service manager does (systemd restarts
    pulseaudio). PulseAudio 16 aborted once in ~17 guest runs on an assertion of its own ("pthread_mutex_destroy
    ... pa_mutex_free"); each death is in the report ("sound_server_deaths"), and the host's sound checks say so."""
    deaths = REPORT.setdefault("sound_server_deaths", [])
    while True:
        code = server.wait()
        log = RESULTS / ("pulseaudio.log" if not deaths else f"pulseaudio-{len(deaths)}.log")
        last = [x for x in log.read_text(errors="replace").splitlines() if x.strip()][-3:] if log.exists() else []
        deaths.append({"t": time.time() * 1000, "exit_status": code, "log": last})
        mark("sound server died: started again", exit_status=code, log=last)
        server, _ = run_sound_server(f"pulseaudio-{len(deaths)}.log")
        probe.start()


@step("pulseaudio")
def start_pulseaudio() -> dict:
    RUNTIME.mkdir(parents=True, exist_ok=True, mode=0o700)
    (RUNTIME / "pa.pa").write_text(PA_CONFIG)
    server, group = run_sound_server("pulseaudio.log")
    probe = VoiceProbe()
    EXTRA["probe"] = probe.snapshot
    threading.Thread(target=keep_sound_server, args=(server, probe), name="sound-server-keeper", daemon=True).start()
    time.sleep(2)
    return {"info": sh("pactl", "info", env=product_env())["stdout"][-600:], "autogroup": group}


def play_speech(short: bool) -> subprocess.Popen:
    mark("speech starts", short=short)
    return subprocess.Popen(["paplay", "-d", "test_speaker", JOB["speech_short" if short else "speech"]],
                            env=product_env())


def speak_and_wait(seconds_after: float, short: bool = True, heard_out=None) -> None:
    """Play the speech (all three phrases, or the first two), wait until the call app heard it out (`heard_out`, a
    `Page.heard_out`, given when the page listens), then wait a little."""
    player = play_speech(short)
    player.wait(timeout=120)
    mark("speech ends")
    if heard_out is not None:
        mark("voice heard out", waited_s=heard_out(time.time() * 1000))
    time.sleep(seconds_after)


def sound_state() -> dict:
    """What the sound server holds for whom (its buffers, per stream)."""
    env = product_env()
    return {"sink_inputs": sh("pactl", "list", "sink-inputs", env=env, keep=6000)["stdout"],
            "source_outputs": sh("pactl", "list", "source-outputs", env=env, keep=8000)["stdout"]}
