"""`avatar-cam` with no arguments: the tray daemon. `avatar-cam daemon --no-tray`: the same with no icon.

One daemon per user (see instance.py): a second `avatar-cam` asks the first to show itself and exits 0. The
command that starts it (cli/daemon.py) takes the instance lock and picks the tray; `Daemon` runs it.

Threads: the main thread runs the tray (pystray wants it) or, headless, waits for a quit request and handles
SIGTERM/SIGINT/SIGHUP; "control" serves the control socket; "camera-start" opens the camera at launch so the icon
appears at once; the controller owns the frame thread. Quitting, by any route, closes the socket, then
releases the camera and microphone, and writes no settings (they were saved as they changed: an edit of
settings.toml made once `ctl quit` has returned stays, and `camera_on` is as the user left it).
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from avatar_cam import __version__
from avatar_cam.daemon import control_server
from avatar_cam.daemon.controller import Controller
from avatar_cam.errors import AvatarCamError
from avatar_cam.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TrayLink:
    """Hooks the tray may set, if its `run_tray` takes a second argument: `run_tray(controller, link)`.

    `show`: bring the menu or a notification forward; called on the control thread when a second `avatar-cam`
    starts or `ctl show` is sent. `stop`: make `run_tray` return (e.g. pystray's `icon.stop`); called from any
    thread on `ctl quit`, SIGTERM, SIGINT or SIGHUP. A tray that sets no `stop` is ended by exiting the process.
    """

    show: Callable[[], None] | None = None
    stop: Callable[[], None] | None = None


class Daemon:
    def __init__(self, tray=None):
        self.tray = tray
        self.link = TrayLink()
        self.controller = Controller(Settings.load())  # load() logs its notices (a damaged file kept aside...)
        self.quit_requested = threading.Event()
        self.server = control_server.ControlServer(control_server.controller_handler(self.controller, self.show, self.request_quit))
        self._starter: threading.Thread | None = None
        self._stopped = False
        self._tray_returned = threading.Event()
        self._shutdown_lock = threading.Lock()

    # --- requests, from any thread ------------------------------------------------------------------
    def show(self) -> None:
        if self.link.show is not None:
            self.link.show()
        else:
            log.info("running without a tray icon: nothing to show")

    def request_quit(self) -> None:
        self.quit_requested.set()
        if self.link.stop is not None:
            self.link.stop()

    # --- life ----------------------------------------------------------------------------------------
    def run(self) -> int:
        log.info("Avatar Cam %s daemon starting (pid %d, %s)", __version__, os.getpid(), "tray" if self.tray else "no tray")
        # Signals first: once the socket answers, a client may stop us with SIGTERM, and that must shut down cleanly.
        restore = self._handle_signals()
        try:
            self.server.start()
        except BaseException:
            restore()
            raise
        try:
            if self.controller.settings.camera_on:
                self._starter = threading.Thread(target=self._start_camera, name="camera-start", daemon=True)
                self._starter.start()
            if self.tray is not None:
                return self._run_tray()
            print(f"Avatar Cam is running without a tray icon (control socket {self.server.path or 'named pipe'}); "
                  "`avatar-cam ctl quit` or Ctrl-C stops it.", flush=True)
            while not self.quit_requested.wait(0.5):
                pass
            return 0
        finally:
            self.shutdown()
            restore()

    def _start_camera(self) -> None:
        try:
            self.controller.start()
        except AvatarCamError as exc:  # the status shows it; the user can fix it from the menu or ctl
            log.warning("the camera did not start: %s", exc)
        except Exception:
            log.exception("the camera did not start")

    def _run_tray(self) -> int:
        threading.Thread(target=self._end_tray_on_quit, name="quit-watch", daemon=True).start()
        run = self.tray.run_tray
        try:
            takes_link = len(inspect.signature(run).parameters) >= 2
        except (TypeError, ValueError):
            takes_link = False
        try:
            code = run(self.controller, self.link) if takes_link else run(self.controller)
        finally:
            self._tray_returned.set()
        return int(code or 0)

    def _end_tray_on_quit(self) -> None:
        """After a quit request, a tray that does not return (no `stop` hook, or a stuck loop) ends the process."""
        self.quit_requested.wait()
        if self._tray_returned.wait(5.0):
            return
        log.info("the tray did not return after a quit request: exiting")
        self.shutdown()
        os._exit(0)

    def _handle_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        # SIGHUP: the terminal of a foreground daemon closed. All three shut down the same clean way.
        signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        previous = {s: signal.getsignal(s) for s in signals}

        def handler(signum, _frame) -> None:
            if self.quit_requested.is_set():  # a second Ctrl-C while shutting down: give up waiting
                log.warning("signal %d again: exiting now", signum)
                os._exit(130)
            log.info("signal %d: quitting", signum)
            self.request_quit()

        for s in signals:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def shutdown(self) -> None:
        """Close the socket, then release camera and microphone; no settings are written. Idempotent."""
        with self._shutdown_lock:
            if self._stopped:
                return
            self.server.close()
            if self._starter is not None:
                self._starter.join(timeout=120)  # never leave a camera opening after we stopped it
            try:
                self.controller.stop(remember=False)  # settings were saved as they changed: nothing to write now
            except Exception:
                log.exception("stopping the camera failed")
            self._stopped = True
            log.info("daemon stopped")
            print("Avatar Cam stopped.", file=sys.stderr, flush=True)
