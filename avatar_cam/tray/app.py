"""The tray app (pystray). `run_tray(controller)` shows the icon and returns when the user quits.

The menu's items are menu.py's; which backend shows the icon is backends.py's; helpers that ask other programs
(device lists, dialogs, the desktop's opener) are desktop.py's.

Threads, and what each owns:
- the main thread runs pystray's event loop (`icon.run()`; GTK and macOS want the main thread). Menu
  callbacks run there and return at once: they hand the work to the command thread or a helper thread.
- "tray-commands" calls the controller, one command at a time in the order clicked, so a camera that takes
  seconds to start never freezes the menu and two clicks never race each other.
- "tray-watch" wakes once a second (at once when the controller reports a change), reads the status and the
  photos folder, and publishes them as `TrayApp.view`. It swaps the icon, refreshes the status line and
  rebuilds the menu when something shown in it changed. The menu's text/checked callables read only `view`
  and settings values, never the controller: its lock is held for seconds while a camera starts.
- "tray-devices" lists microphones every few seconds and OpenVINO devices once, in subprocesses.
- helper threads wait on subprocesses: the file dialog, "open folder", "open log".
"""

from __future__ import annotations

import functools
import logging
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from avatar_cam import paths
from avatar_cam.daemon.controller import Controller
from avatar_cam.daemon.photos import photo_library, photos_dir
from avatar_cam.daemon.status import Status
from avatar_cam.errors import AvatarCamError
from avatar_cam.tray.backends import (
    BACKEND_ICON_SIZE,
    STATE_ICONS,
    drain_gtk_events,
    icon_image,
    load_backend,
    pick_backend,
    set_status_label,
)
from avatar_cam.tray.desktop import (
    autostart_enabled,
    current_microphones,
    open_in_desktop,
    openvino_devices,
    photo_dialog_command,
)
from avatar_cam.tray.menu import MenuView, build_menu, shorten
from avatar_cam.tray.notices import SlowLips

log = logging.getLogger(__name__)

TITLE = "Avatar Cam"
POLL_S = 1.0  # status line and photos folder
MIC_POLL_S = 5.0  # microphones: a subprocess, ~0.1 s of CPU each time
ERROR_SHOWN_S = 20.0  # a failed command's message stays in the status line this long (or until the next success)


class TrayApp:
    def __init__(self, controller: Controller, backend: str | None = None):
        self.controller = controller
        if backend is None:
            backend, problems = pick_backend()
            if backend is None:
                raise AvatarCamError(f"cannot show a tray icon: {problems}", hint="`avatar-cam run --no-tray` still works")
        self.backend = backend
        self.icon_size = BACKEND_ICON_SIZE.get(backend, 32)
        self.view = MenuView(photos=tuple(photo_library()), autostart=autostart_enabled(), preview=self._preview_state())
        self._commands = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tray-commands")
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._busy: str | None = None  # what the command thread is doing, for the status line
        self._error: tuple[str, float] | None = None  # the last failed command's message, and when
        self._dialog_open = threading.Lock()
        self._shown_icon = STATE_ICONS["stopped"]  # what the icon is created with, below
        self._shown_signature: tuple | None = None
        self._stop_requested = False
        self._slow_lips = SlowLips()  # the watch thread's
        self._watch: threading.Thread | None = None
        self._mics: tuple[str, ...] = ()  # written by the devices thread only
        self._ov_devices: tuple[str, ...] = ("CPU", "AUTO")
        icon_class = load_backend(backend)  # before anything else imports pystray (see load_backend)
        self.icon = icon_class("avatar-cam", icon=icon_image("stopped", self.icon_size), title=TITLE, menu=build_menu(self))
        controller.subscribe(lambda _status: self._wake.set())  # any thread; the watch thread does the rest

    # --- life ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Show the icon and run the event loop on this (the main) thread until `quit` or `stop`."""
        import signal

        previous_sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
        try:
            self.icon.run(setup=lambda _icon: self._setup(previous_sigint))
        except Exception as exc:
            if not self._closing.is_set():
                raise
            # pystray's GTK backend closes its last notification on the way out, and raises when the desktop
            # has no notification service: the tray has ended all the same.
            log.debug("the tray loop ended with: %s", exc)
        finally:
            if self.backend in ("gtk", "appindicator"):
                drain_gtk_events()
            self._closing.set()
            self._wake.set()
            self._commands.shutdown(wait=False, cancel_futures=True)
            if self._watch is not None:
                self._watch.join(timeout=5)
        return 0

    def _setup(self, previous_sigint) -> None:
        """On pystray's setup thread, once the loop runs."""
        if self.backend == "xorg":
            # pystray's Xlib backend starts this thread before it records which thread runs its loop, and
            # every call into the icon needs that record: wait for it (else: AttributeError, no icon).
            deadline = time.monotonic() + 5.0
            while getattr(self.icon, "_thread", None) is None and time.monotonic() < deadline:
                time.sleep(0.01)
        self.icon.visible = True
        if previous_sigint is not None and self.backend in ("gtk", "appindicator"):
            # pystray's GTK loop resets SIGINT to "kill at once"; put back the daemon's handler (main thread only).
            import signal

            from gi.repository import GLib

            def restore() -> bool:
                signal.signal(signal.SIGINT, previous_sigint)
                return False  # run once

            GLib.idle_add(restore)
        self._watch = threading.Thread(target=self._watch_loop, name="tray-watch", daemon=True)
        self._watch.start()
        threading.Thread(target=self._devices_loop, name="tray-devices", daemon=True).start()
        for notice in getattr(self.controller.settings, "notices", [])[:1]:
            self._notify(notice, "Avatar Cam settings")
        if self._stop_requested:
            self._leave()

    def stop(self) -> None:
        """Make `run` return, leaving the controller as it is (the daemon shuts it down). Any thread."""
        self._stop_requested = True
        self._closing.set()
        self._leave()

    def _leave(self) -> None:
        # Hide first: a stopped GTK icon would otherwise stay docked until garbage-collected.
        self.icon.visible = False
        self.icon.stop()

    def quit(self) -> None:
        """The Quit item: stop the camera, then the icon. Returns at once; the work runs on its own thread."""
        if self._closing.is_set():
            return
        self._closing.set()
        threading.Thread(target=self._quit_worker, name="tray-quit", daemon=True).start()

    def _quit_worker(self) -> None:
        self._commands.shutdown(wait=True, cancel_futures=True)  # let a running command finish, drop queued ones
        try:
            self.controller.stop(remember=False)  # quitting is not "Stop camera": the next start restores it
        except Exception:
            log.exception("stopping the camera on quit failed")
        finally:
            self._leave()

    def show(self) -> None:
        """A second `avatar-cam` asked us to show ourselves: say where we are."""
        self._notify(f"Avatar Cam is running: {self.view.line}. Its menu is on this icon.", TITLE)

    # --- commands: menu callbacks (main thread) hand them to the command thread -----------------------------
    def do(self, fn, *args, busy: str | None = None, **kwargs):
        """Run `fn(*args, **kwargs)` on the command thread; its errors become a notification and the status line."""
        if self._closing.is_set():
            return None
        return self._commands.submit(self._run_command, functools.partial(fn, *args, **kwargs), busy)

    def _set_busy(self, text: str | None) -> None:
        self._busy = text
        self._wake.set()

    def _run_command(self, command: functools.partial, busy: str | None) -> None:
        fn = command.func
        self._set_busy(busy)
        try:
            command()
            self._error = None
        except AvatarCamError as exc:
            self._report(exc)
        except Exception as exc:  # a bug must not take the tray down
            log.exception("tray command %s failed", getattr(fn, "__name__", fn))
            self._report(AvatarCamError(f"{type(exc).__name__}: {exc}", hint=f"see the log: {self.log_path()}"))
        finally:
            self._set_busy(None)

    def _report(self, exc: AvatarCamError) -> None:
        first = str(exc).splitlines()[0]
        log.warning("%s", str(exc).replace("\n", " "))
        self._error = (first, time.monotonic())
        self._wake.set()
        self._notify(str(exc), f"{TITLE}: error")

    def _notify(self, message: str, title: str) -> None:
        if getattr(self.icon, "HAS_NOTIFICATION", False):
            try:
                self.icon.notify(message, title)
                return
            except Exception as exc:  # noqa: BLE001 - no notification daemon: the log and status line still say it
                log.debug("notification failed: %s", exc)
        log.info("notification: %s: %s", title, message)

    # Toggles decide on the command thread, when they run: two quick clicks then mean on-off, not on-on.
    def toggle_camera(self) -> None:
        def toggle() -> None:
            if self.controller.running:
                self.controller.stop()
            else:
                self._set_busy("Starting the camera...")
                self.controller.start()

        self.do(toggle)

    def toggle_pause(self) -> None:
        def toggle() -> None:
            if self.controller.status().state == "paused":
                self.controller.resume()
            else:
                self.controller.pause()

        self.do(toggle)

    def toggle_mirror(self) -> None:
        self.do(lambda: self.controller.update_settings(mirror=not self.controller.settings.mirror))

    def toggle_virtual_mic(self) -> None:
        self.do(lambda: self.controller.update_settings(virtual_mic=not self.controller.settings.virtual_mic),
                busy="Switching Avatar Cam Microphone...")

    def add_photo(self) -> None:
        if not self._dialog_open.acquire(blocking=False):
            return  # one dialog at a time
        threading.Thread(target=self._add_photo_dialog, name="photo-dialog", daemon=True).start()

    def _add_photo_dialog(self) -> None:
        try:
            command = photo_dialog_command()
            if command is None:
                self._report(AvatarCamError("no file dialog is available here",
                                            hint=f"copy photos into {photos_dir()} (Photo > Open photos folder)"))
                return
            try:
                done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
            except OSError as exc:
                self._report(AvatarCamError(f"the file dialog did not open: {exc}",
                                            hint=f"copy photos into {photos_dir()} (Photo > Open photos folder)"))
                return
            chosen = done.stdout.strip().splitlines()
            if done.returncode == 0 and chosen and chosen[0]:
                self.do(self.controller.add_photo, chosen[0], busy="Adding the photo...")
        finally:
            self._dialog_open.release()

    def open_photos_folder(self) -> None:
        def run() -> None:
            photos_dir().mkdir(parents=True, exist_ok=True)
            open_in_desktop(photos_dir())

        self._helper(run)

    def log_path(self) -> Path:
        return paths.log_dir() / "avatar-cam.log"

    def open_log(self) -> None:
        def run() -> None:
            path = self.log_path()
            if not path.is_file():
                raise AvatarCamError(f"there is no log yet ({path})", hint="run `avatar-cam` to start the daemon, which writes it")
            open_in_desktop(path)

        self._helper(run)

    def _helper(self, fn) -> None:
        def run() -> None:
            try:
                fn()
            except AvatarCamError as exc:
                self._report(exc)
            except OSError as exc:
                self._report(AvatarCamError(str(exc)))

        threading.Thread(target=run, name="tray-helper", daemon=True).start()

    def toggle_autostart(self) -> None:
        def toggle() -> None:
            from avatar_cam.tray import autostart

            autostart.set_enabled(not autostart.is_enabled())

        self.do(toggle)

    def toggle_preview(self) -> None:
        if hasattr(self.controller, "set_preview"):
            self.do(lambda: self.controller.set_preview(not self._preview_state()))

    def _preview_state(self) -> bool | None:
        if not hasattr(self.controller, "set_preview"):
            return None
        return bool(getattr(self.controller, "preview", False))

    # --- the watch thread, and the device lists it shows ----------------------------------------------------
    def _watch_loop(self) -> None:
        while not self._closing.is_set():
            try:
                self.refresh()
            except Exception:  # never let the watch thread die: the menu would go stale
                log.exception("tray refresh failed")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _devices_loop(self) -> None:
        """Thread "tray-devices": the device lists come from subprocesses (slow), so they are fetched here and
        the watch thread only reads `_mics` and `_ov_devices`."""
        self._mics = tuple(current_microphones(in_process=True) or ())
        self._wake.set()
        self._ov_devices = openvino_devices()
        self._wake.set()
        while not self._closing.wait(MIC_POLL_S):
            mics = current_microphones()
            if mics is not None and tuple(mics) != self._mics:
                self._mics = tuple(mics)
                self._wake.set()

    def refresh(self) -> None:
        """Publish a new view; swap the icon and update the menu where it changed. Watch thread only."""
        status = self.controller.status()
        self.view, old = MenuView(
            status=status, line=self._line(status), photos=tuple(photo_library()), mics=self._mics,
            ov_devices=self._ov_devices, autostart=autostart_enabled(), preview=self._preview_state()), self.view
        if STATE_ICONS.get(status.state) != self._shown_icon:
            self._shown_icon = STATE_ICONS.get(status.state)
            self.icon.icon = icon_image(status.state, self.icon_size)
        self.icon.title = f"{TITLE}: {self.view.line}"
        s = self.controller.settings
        # Not the raw state: live <-> silent flips as the user talks, and changes only the status line.
        signature = (status.state == "paused", status.photo, status.mic, status.engine, status.device, self.controller.running,
                     self.view.photos, self.view.mics, self.view.ov_devices, self.view.autostart, self.view.preview,
                     s.width, s.height, s.fps, s.mirror, s.engine, s.device, s.mic, s.photo, s.virtual_mic,
                     s.performance)
        if signature != self._shown_signature:
            self._shown_signature = signature
            self.icon.update_menu()
        elif self.view.line != old.line:
            set_status_label(self.icon, self.backend, self.view.line)
        self._offer_lite(status)

    def _offer_lite(self, status: Status) -> None:
        message = self._slow_lips.check(status)
        if message:
            self._notify(message, f"{TITLE}: lips are slow")

    def _line(self, status: Status) -> str:
        if self._busy:
            return self._busy
        if self._error is not None:
            message, when = self._error
            if time.monotonic() - when < ERROR_SHOWN_S:
                return shorten(f"Error: {message}")
            self._error = None
        return shorten(status.line())


def run_tray(controller: Controller, link=None) -> int:
    """Show the tray for `controller` on this (the main) thread; returns 0 after Quit or `link.stop()`.

    `link` (daemon.TrayLink) receives `show` (a second instance started) and `stop` (quit requested elsewhere).
    """
    app = TrayApp(controller)
    if link is not None:
        link.show = app.show
        link.stop = app.stop
    return app.run()
