"""The call app's side of the guest checks: headless Chromium on call_page.html, and the small HTTP server
that serves the page, takes its reports (frames, sound, track events, snapshots) and answers with what it
should do next (open the devices, send a snapshot, finish). Used by in_guest.py, inside the guest."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Page:
    """What the page reported, and what it should do next (answers to its POSTs)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.video: list = []
        self.audio: list = []
        self.events: list = []
        self.last: dict = {}
        self.fatal: str | None = None
        self.snapshots_wanted: list[str] = []
        self.snapshots: dict = {}
        self.finish = False
        self.go = threading.Event()  # the page opens the devices once the daemon runs (Chromium starts before)

    def heard_out(self, since_ms: float, quiet_s: float = 3.0, limit_s: float = 20.0,
                  loud: float = 0.01) -> float | None:
        """Wait until the page has heard `quiet_s` of silence (longer than the speech's 2.5 s between phrases) after
        the last voice it heard since `since_ms`: the voice reaches Chromium seconds after it was played in the guest
        (up to 7 s seen), and a next step must not start while the last one's voice is still on its way, or its
        phrases are counted in the next step's window. Seconds waited, or None after `limit_s`."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            with self.lock:
                blocks = [(a["t"], a["rms"]) for a in self.audio if a["t"] > since_ms]
            last_voice = max((t for t, rms in blocks if rms > loud), default=since_ms)
            if blocks and blocks[-1][0] - last_voice >= 1000 * quiet_s:
                return round(time.monotonic() - started, 1)
            time.sleep(0.5)
        return None

    def take(self, batch: dict) -> dict:
        with self.lock:
            self.video += batch.get("video", [])
            self.audio += batch.get("audio", [])
            self.events += batch.get("events", [])
            self.last = {k: batch.get(k) for k in ("readyState", "settings", "t")}
            self.fatal = batch.get("fatal", self.fatal)
            todo = {"snapshots": self.snapshots_wanted, "finish": self.finish}
            self.snapshots_wanted = []
            return todo


def serve(page: Page, folder: Path, results: Path, mark) -> ThreadingHTTPServer:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/progress":
                if body["stage"] != "waiting":
                    mark("page", stage=body["stage"])
                answer = {"go": page.go.is_set()}
            else:
                answer = page.take(body) if self.path == "/report" else self.snapshot(body)
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def snapshot(self, body: dict) -> dict:
            png = base64.b64decode(body["png"].split(",", 1)[1])
            (results / f"chromium_{body['name']}.png").write_bytes(png)
            page.snapshots[body["name"]] = {"width": body["width"], "height": body["height"], "t": time.time() * 1000}
            return {}

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_chromium(port: int, results: Path, env: dict) -> subprocess.Popen:
    """Chromium in a session (so a scheduling group) of its own, as an app on a desktop."""
    log = (results / "chromium.log").open("w")
    return subprocess.Popen(
        # --no-zygote: fewer processes to start under emulation (allowed with --no-sandbox).
        ["chromium", "--headless=new", "--no-sandbox", "--no-zygote", "--use-fake-ui-for-media-stream", "--disable-gpu",
         "--disable-extensions", "--disable-component-update", "--disable-background-networking", "--disable-sync",
         "--no-default-browser-check", "--disable-breakpad", "--disable-features=Translate,MediaRouter,OptimizationHints",
         "--autoplay-policy=no-user-gesture-required", "--user-data-dir=/tmp/chromium-profile", "--no-first-run",
         f"http://127.0.0.1:{port}/call_page.html"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
