"""A real PulseAudio server in user mode, as a stand-in sound card for tests (see /work/shared/TESTING.md).

tests/conftest.py registers this file as a plugin (`pytest_plugins = ["pulse"]`; a test module may say the
same, harmlessly), so any test can name the fixture and all share ONE session-wide server:

    def test_something(pulse_server):
        player = pulse_server.play(speech_wav)   # paplay -d test_speaker: "speaks into the microphone"
        ...                                      # record with sounddevice device="pulse" (or None)
        player.wait()

Do not `from pulse import pulse_server` into a test module: that defines a second fixture, and a second server.

The server has two null sinks, `test_speaker` (what tests play into; default sink) and `avatarcam_sink`,
and the remap source `AvatarCam-Mic` (the product's virtual microphone). The default source is
`test_speaker.monitor`, so recording from the default device hears what `play()` plays.
While the fixture is active, os.environ carries XDG_RUNTIME_DIR, PULSE_SERVER and PULSE_CLIENTCONFIG
(autospawn off), so in-process libpulse clients (PortAudio's ALSA `pulse` device) and subprocesses find it.

PortAudio lists devices only when it initialises: `import sounddevice` before the server existed lists no
`pulse` device. The fixture therefore re-initialises PortAudio (sd._terminate(); sd._initialize()) after
the server is up, and again after it is gone. PULSE_SOURCE (tested) and PULSE_SINK are read when a stream opens,
so a test can set them with monkeypatch just before opening a stream.

The daemon runs in the foreground as our child (not --daemonize) so that we know its pid and reap it;
teardown stops the parec keep-alive readers and the daemon by pid and checks that none is left.
If `pulseaudio` is not installed the fixture FAILS (CI installs it; see tests/run.sh).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name=test_speaker rate=48000 channels=1
load-module module-null-sink sink_name=avatarcam_sink rate=48000 channels=1
load-module module-remap-source master=avatarcam_sink.monitor source_name=AvatarCam-Mic channels=1
set-default-sink test_speaker
set-default-source test_speaker.monitor
"""
# An idle null sink holds back its monitor for up to 2 s; a reader on each monitor keeps them running.
KEEP_ALIVE_MONITORS = ("test_speaker.monitor", "avatarcam_sink.monitor")
# Measured: for ~2 s after the daemon starts, a new recording stream on test_speaker.monitor gets no data at
# all (1.9 s at start, 0.9 s one second later, 5 ms two seconds later), keep-alive readers or not; after
# that, new streams get their first data within 10-40 ms. So start() waits until a probe recording flows.
PROBED_SOURCES = ("test_speaker.monitor", "avatarcam_sink.monitor", "AvatarCam-Mic")


class PulseServerError(RuntimeError):
    pass


class PulseServer:
    """Start/stop one private PulseAudio daemon. Usable as a context manager."""

    def __init__(self) -> None:
        self.runtime_dir: Path | None = None
        self.env: dict[str, str] = {}
        self.daemon: subprocess.Popen | None = None
        self.readers: list[subprocess.Popen] = []

    @property
    def log_path(self) -> Path:
        return self.runtime_dir / "pa.log"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in [self.daemon, *self.readers] if p is not None]

    def subprocess_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self, timeout: float = 10.0) -> PulseServer:
        exe = shutil.which("pulseaudio")
        missing = [t for t in ("pulseaudio", "pactl", "parec", "paplay") if shutil.which(t) is None]
        if missing:
            raise PulseServerError(
                f"{', '.join(missing)} not found: these tests need a real PulseAudio server as a stand-in microphone. "
                "Install it: apt-get install -y --no-install-recommends pulseaudio pulseaudio-utils libasound2-plugins"
            )
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="avatarcam-pulse-"))
        self.runtime_dir.chmod(0o700)
        (self.runtime_dir / "pa.pa").write_text(CONFIG)
        (self.runtime_dir / "client.conf").write_text("autospawn = no\n")
        (self.runtime_dir / "config").mkdir()
        self.env = {
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_SERVER": f"unix:{self.runtime_dir}/pulse/native",
            "PULSE_CLIENTCONFIG": str(self.runtime_dir / "client.conf"),
        }
        daemon_env = {**self.subprocess_env(), "XDG_CONFIG_HOME": str(self.runtime_dir / "config")}
        daemon_env.pop("PULSE_SERVER")  # the daemon must not think it is a client of another server
        self.daemon = subprocess.Popen(
            [exe, "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "-n", "-F", str(self.runtime_dir / "pa.pa"),
             f"--log-target=file:{self.log_path}"],
            env=daemon_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            self._wait(lambda: self.pactl("info").returncode == 0, timeout, "`pactl info` never answered")
            for monitor in KEEP_ALIVE_MONITORS:
                self.readers.append(subprocess.Popen(
                    ["parec", "--latency-msec=10", "-d", monitor], env=self.subprocess_env(),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
            self._wait(self._readers_connected, timeout, "the parec keep-alive readers never connected")
            for source in PROBED_SOURCES:
                self.wait_until_flowing(source, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.daemon.poll() is not None:
                raise PulseServerError(f"pulseaudio exited with status {self.daemon.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise PulseServerError(f"{what} within {timeout} s:\n{self._log_tail()}")
            time.sleep(0.01)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def pactl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], check=False, env=self.subprocess_env(), capture_output=True, text=True, timeout=10)

    def wait_until_flowing(self, source: str = "test_speaker.monitor", timeout: float = 10.0) -> float:
        """Block until a new recording stream on `source` receives audio; returns how long that took."""
        t0 = time.monotonic()
        probe = subprocess.Popen(["parec", "--latency-msec=10", "-d", source], env=self.subprocess_env(),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            flowing = bool(select.select([probe.stdout], [], [], timeout)[0]) and bool(probe.stdout.read1(1))
        finally:
            probe.kill()
            probe.wait()
            probe.stdout.close()
        if not flowing:
            raise PulseServerError(f"no audio from {source} within {timeout} s:\n{self._log_tail()}")
        return time.monotonic() - t0

    def _readers_connected(self) -> bool:
        out = self.pactl("list", "source-outputs").stdout
        return all(f'application.process.id = "{r.pid}"' in out for r in self.readers)

    def count_source_outputs(self) -> int:
        """Recording streams on the server: 3 when idle (the 2 keep-alive readers and the remap source's own)."""
        out = self.pactl("list", "short", "source-outputs")
        return len(out.stdout.splitlines()) if out.returncode == 0 else -1

    def play(self, path, device: str = "test_speaker") -> subprocess.Popen:
        """Play a sound file into `device` (default: the test speaker the default source listens to).

        Returns the Popen: `.wait()` for the end. paplay's messages go to `paplay_log` (no pipes to drain)."""
        with open(self.paplay_log, "ab") as log:
            return subprocess.Popen(["paplay", "-d", device, str(path)], env=self.subprocess_env(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)

    @property
    def paplay_log(self) -> Path:
        return self.runtime_dir / "paplay.log"

    def stop(self) -> None:
        """Stop the readers, then the daemon, by pid; raise if any of them is still alive."""
        for proc in [*self.readers, self.daemon]:
            if proc is not None:
                terminate(proc)
        alive = [p.pid for p in [*self.readers, self.daemon] if p is not None and p.poll() is None]
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if alive:
            raise PulseServerError(f"PulseAudio test processes still running after teardown: {alive}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RestartablePulse(PulseServer):
    """A private PulseAudio server that can crash (SIGTERM) and start again at the same address."""

    def crash(self) -> None:
        for proc in [*self.readers, self.daemon]:
            proc.terminate()
            proc.wait(10)
        self.readers = []

    def come_back(self, timeout: float = 20.0) -> None:
        """Start the daemon again with the same runtime dir and config; return once recording streams get audio."""
        env = {**self.subprocess_env(), "XDG_CONFIG_HOME": str(self.runtime_dir / "config")}
        env.pop("PULSE_SERVER")
        self.daemon = subprocess.Popen(self.daemon.args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self._wait(lambda: self.pactl("info").returncode == 0, timeout, "`pactl info` never answered after the restart")
        self.readers = [subprocess.Popen(["parec", "--latency-msec=10", "-d", "test_speaker.monitor"],
                                         env=self.subprocess_env(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self._wait(self._readers_connected, timeout, "the keep-alive reader never connected after the restart")
        self.wait_until_flowing("test_speaker.monitor", timeout)


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s; returns once the process is gone."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def serving(server: PulseServer, unset: tuple[str, ...] = ()):
    """This process (environment and PortAudio) talks to `server` inside the block; it is stopped afterwards
    and PortAudio rescanned, so what follows sees the previous server again."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in server.env.items():
            mp.setenv(name, value)
        for name in unset:
            mp.delenv(name, raising=False)
        rescan_portaudio()
        try:
            yield server
        finally:
            try:
                server.stop()
            finally:
                mp.undo()
                rescan_portaudio()


def rescan_portaudio() -> None:
    """Make an already-imported sounddevice see the current set of devices (PortAudio scans at init)."""
    sd = sys.modules.get("sounddevice")
    if sd is not None:
        sd._terminate()
        sd._initialize()


@pytest.fixture(scope="session")
def pulse_server():
    """A running private PulseAudio server for the whole session; env vars point at it while it lives."""
    server = PulseServer()
    problem = None
    try:
        server.start()
    except PulseServerError as e:
        problem = str(e)
    if problem:  # outside the except block, so the report is just the message
        pytest.fail(problem, pytrace=False)
    with serving(server):
        yield server
