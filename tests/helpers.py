"""Helpers the tests share (import as `from helpers import ...`); no test file imports another.

- run_cli: the real CLI in a subprocess (run_cli_peak_rss: and its peak memory); wait_for / eventually: polling
  with a deadline;
- short_runtime_dir, DaemonProcess: a real `avatar-cam daemon --no-tray` (through run_product.py);
- LocalServer & co.: a local HTTP server whose misbehaviour each test chooses (downloads);
- defaults, device_names, voice_windows: what a PulseAudio server has, and where a voice reappears in a recording.
PulseAudio itself is pulse.py's (a pytest plugin); the recording camera backend is camera_recorder.py's.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from avatar_cam import paths
from avatar_cam.daemon import control_client
from avatar_cam.errors import NotRunningError

RUN_PRODUCT = Path(__file__).with_name("run_product.py")
READY_TIMEOUT_S = 60.0  # generous: CI machines are small and shared


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 120):
    """Run `python -m avatar_cam ARGS` in a subprocess, as a user would run `avatar-cam ARGS`."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "avatar_cam", *args], capture_output=True, text=True, env=full_env, timeout=timeout,
        # No terminal unless a test types into it: a prompt must never wait for a person in CI.
        **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}),
    )


def wait_for(condition, what: str, timeout: float = 30.0, step: float = 0.02):
    """Poll `condition` until it returns something true, and return that; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def eventually(condition, timeout: float = 5.0, step: float = 0.02) -> bool:
    """Whether `condition` becomes true within `timeout` s (for tests that assert with their own message)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


# --- a real daemon ----------------------------------------------------------------------------------------


def short_runtime_dir() -> Path:
    """A private XDG_RUNTIME_DIR with a short path (a Unix socket path must fit in ~100 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="ac-", dir="/tmp"))
    d.chmod(0o700)
    return d



class DaemonProcess:
    """One `avatar-cam daemon --no-tray` subprocess; its stdout and stderr go to files (never a full pipe)."""

    def __init__(self, workdir: Path, *args: str, env: dict | None = None, name: str = "daemon"):
        workdir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = workdir / f"{name}.out", workdir / f"{name}.err"
        self.env = {**os.environ, **(env or {})}
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(RUN_PRODUCT), "daemon", "--no-tray", *args], cwd=workdir,
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"exit status {self.proc.poll()}\n--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"

    def status(self, timeout: float = 30.0) -> dict:
        return control_client.send("status", timeout=timeout)["status"]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        """Wait until the control socket answers; returns the first status."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the daemon exited before answering:\n{self.describe()}")
            try:
                return self.status()
            except NotRunningError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the daemon did not answer within {timeout} s:\n{self.describe()}")
                time.sleep(0.05)

    def wait_status(self, check, timeout: float = READY_TIMEOUT_S, what: str = "") -> dict:
        """Poll the status until `check(status)` holds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if check(status):
                return status
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"status never reached {what or check}: last {status}\n{self.describe()}")
            time.sleep(0.1)

    def wait_stderr(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} never appeared on stderr:\n{self.describe()}")
            time.sleep(0.05)
        return self.stderr

    def signal_and_wait(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.proc.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the daemon did not exit within {timeout} s:\n{self.describe()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --- a local HTTP server whose misbehaviour each test chooses ---------------------------------------------


@dataclass
class Serve:
    """Serve `body`, honouring `Range: bytes=N-`. The first responses stop at the absolute offsets in `cut_at`
    (after promising the whole rest in Content-Length) and drop the connection."""

    body: bytes
    cut_at: list[int] = field(default_factory=list)
    honour_range: bool = True
    content_type: str = "application/octet-stream"


@dataclass
class Status:
    code: int
    body: bytes = b"error"
    headers: dict = field(default_factory=dict)


@dataclass
class Stall:
    """Accept the request, then send nothing (or only the headers and `head` bytes of the body) until released."""

    after_headers: bytes | None = None
    total: int = 1_000_000


@dataclass
class Endless:
    """Send zeros and no Content-Length, until the client hangs up (or `limit` bytes, a safety net)."""

    limit: int = 4 << 30


@dataclass
class Request:
    path: str
    range: str | None
    dest_existed: bool | None  # observed on disk when the request arrived (for the tests that set `watch`)
    part_size: int | None


class LocalServer:
    def __init__(self) -> None:
        self.routes: dict[str, object] = {}
        self.requests: list[Request] = []
        self.watch: Path | None = None  # a download destination to observe at each request
        self.release = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _observe(self, path: str, range_header: str | None) -> None:
        dest = self.watch
        part = dest.with_name(dest.name + ".part") if dest else None
        self.requests.append(
            Request(path, range_header, dest.exists() if dest else None, part.stat().st_size if part and part.exists() else None)
        )

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server._observe(self.path, self.headers.get("Range"))
                route = server.routes.get(self.path)
                if route is None:
                    route = Status(404, b"not found")
                if isinstance(route, Status):
                    self.send_response(route.code)
                    for k, v in route.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    self.wfile.write(route.body)
                elif isinstance(route, Endless):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    block, sent = bytes(1 << 20), 0
                    with contextlib.suppress(OSError):
                        while sent < route.limit:
                            self.wfile.write(block)
                            sent += len(block)
                    self.close_connection = True
                elif isinstance(route, Stall):
                    if route.after_headers is not None:
                        self.send_response(200)
                        self.send_header("Content-Length", str(route.total))
                        self.end_headers()
                        self.wfile.write(route.after_headers)
                        self.wfile.flush()
                        route.after_headers = None  # later requests stall before answering
                    server.release.wait(30)
                    self.close_connection = True
                else:
                    self._serve(route)

            def _serve(self, route: Serve):
                size = len(route.body)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and route.honour_range:
                    start = int(match[1])
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(size - start))
                self.end_headers()
                stop = route.cut_at.pop(0) if route.cut_at else size
                self.wfile.write(memoryview(route.body)[start:max(start, stop)])
                if stop < size:
                    self.wfile.flush()
                    self.close_connection = True

        return Handler


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/wav2lip_gan.pth"


# --- PulseAudio devices, and a voice found again in a recording -----------------------------------------


def defaults(pulse) -> tuple[str, str]:
    return pulse.pactl("get-default-sink").stdout.strip(), pulse.pactl("get-default-source").stdout.strip()


def device_names(pulse) -> set[str]:
    names = set()
    for kind in ("sinks", "sources"):
        names |= {line.split("\t")[1] for line in pulse.pactl("list", "short", kind).stdout.splitlines()}
    return names


def voice_windows(x: np.ndarray, y: np.ndarray, start: int, win: int = 8000, search: int = 1600):
    """Each voiced 0.5 s window of x from `start` on, found in y: (centre in x, centre in y, similarity).

    Similarity compares magnitude spectrograms: the playout resamples by up to 0.3% while it follows the
    delay, which a waveform correlation over 0.5 s would punish, and which nobody can hear."""
    probe = x[start : start + 4 * win]  # the rough lag, from 2 s of voice (FFT cross-correlation)
    size = 1 << (len(y) + len(probe)).bit_length()
    full = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(probe, size)), size)[: len(y) - len(probe)]
    lag = int(np.argmax(full)) - start
    found = []
    for s0 in range(start, len(x) - win, win // 2):
        seg = x[s0 : s0 + win]
        if np.sqrt(np.mean(seg**2)) < 0.02:
            continue
        lo = max(0, s0 + lag - search)
        ref = y[lo : lo + win + 2 * search]
        if len(ref) < win + 2 * search:
            break
        k = int(np.argmax(np.correlate(ref, seg, "valid")))
        a, b = magnitudes(seg).ravel(), magnitudes(ref[k : k + win]).ravel()
        found.append((s0 + win // 2, lo + k + win // 2, float(np.corrcoef(a, b)[0, 1])))
    return found


def magnitudes(x: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::128] * np.hanning(512)
    return np.abs(np.fft.rfft(frames, axis=1))
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli_peak_rss(*args: str, env: dict | None = None, timeout: float = 300):
    """`run_cli`, and the peak RSS of that `avatar-cam` process in MB.

    The process is started by a small launcher, not by pytest: Linux counts the RSS of the parent a child was
    forked from in the child's peak, so a child of a big pytest process would report pytest's size.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, rss.name, sys.executable, "-m", "avatar_cam", *args], capture_output=True,
            text=True, env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        peak_kib = int(rss.read() or 0)
    return result, peak_kib / 1024


def model_files() -> list[str]:
    """What the user's models folder holds now (nothing if it does not exist)."""
    folder = paths.models_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_clean_failure(result: subprocess.CompletedProcess, with_fix: bool = False) -> None:
    """A command that failed as a user should see it: exit code 2, a message and no traceback (`with_fix`: and
    the message's "-> what to do" line)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "\navatar-cam: " in "\n" + result.stderr
    if with_fix:
        assert "\n  -> " in result.stderr  # a message, then its fix
