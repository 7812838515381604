"""The tray icon and its menu (pystray). `run_tray(controller)` shows it and returns when the user quits.

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
import importlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from . import fresh_process, paths
from .controller import PHOTO_SUFFIXES, Controller, Status, photo_library, photos_dir
from .errors import AvatarCamError

log = logging.getLogger(__name__)

TITLE = "Avatar Cam"
NO_DISPLAY = "no display: the tray cannot show; `avatar-cam run --no-tray` still works"
STATE_ICONS = {"stopped": "idle", "live": "live", "silent": "live", "paused": "paused", "error": "error"}
# The PNG size handed to each backend (they all rescale to the panel's size themselves): the size the panel
# most often shows, so that the common case needs no rescaling. AppIndicator hosts draw 16 px at 1x and 32 px
# at 2x; a GTK/X11 tray icon sits in a 24-32 px slot; Windows' small icon is 16-32 px; macOS scales to 22 pt.
BACKEND_ICON_SIZE = {"appindicator": 32, "gtk": 24, "xorg": 24, "win32": 32, "darwin": 64}
RESOLUTIONS = ((1280, 720), (960, 540), (640, 360), (1920, 1080))
FRAME_RATES = (15, 24, 25, 30)
ENGINES = (("wav2lip", "Wav2Lip"), ("lite", "Lite"))
POLL_S = 1.0  # status line and photos folder
MIC_POLL_S = 5.0  # microphones: a subprocess, ~0.1 s of CPU each time
ERROR_SHOWN_S = 20.0  # a failed command's message stays in the status line this long (or until the next success)


# --- backends -------------------------------------------------------------------------------------------


def choose_backends(env=None, platform: str = sys.platform) -> list[str]:
    """pystray backends to try, best first.

    - The user's `PYSTRAY_BACKEND`, alone, when set.
    - GNOME (and Unity) show no legacy X11 tray icons, only StatusNotifier items: AppIndicator first. A Wayland
      session has no XEmbed tray at all: AppIndicator first there too.
    - Elsewhere on X11 (XFCE, MATE, Cinnamon, KDE, i3 + trayer...): GTK's status icon, which has a real
      right-click menu, then pystray's pure-Xlib backend (needs no PyGObject, but has no menu: a left click
      runs the default item only).
    """
    env = os.environ if env is None else env
    if env.get("PYSTRAY_BACKEND"):
        return [env["PYSTRAY_BACKEND"]]
    if platform == "darwin":
        return ["darwin"]
    if platform.startswith("win"):
        return ["win32"]
    desktop = env.get("XDG_CURRENT_DESKTOP", "").upper()
    wayland = env.get("XDG_SESSION_TYPE", "") == "wayland" or (env.get("WAYLAND_DISPLAY") and not env.get("DISPLAY"))
    if "GNOME" in desktop or "UNITY" in desktop or wayland:
        return ["appindicator", "gtk", "xorg"]
    return ["gtk", "xorg"]


_loaded: dict[str, type] = {}


def load_backend(name: str) -> type:
    """The pystray Icon class of backend `name`.

    pystray picks its backend when first imported, from PYSTRAY_BACKEND; we set it for that one import so the
    package does not try (and half-initialise) backends we did not choose. Without a display, pystray raises
    Xlib.error.DisplayNameError (not ImportError), and gi raises ValueError for a missing typelib: any
    exception means "this backend cannot work here".
    """
    if name not in _loaded:
        if "pystray" not in sys.modules:
            saved = os.environ.get("PYSTRAY_BACKEND")
            os.environ["PYSTRAY_BACKEND"] = name
            try:
                importlib.import_module("pystray")
            finally:
                if saved is None:
                    os.environ.pop("PYSTRAY_BACKEND", None)
                else:
                    os.environ["PYSTRAY_BACKEND"] = saved
        icon_class = importlib.import_module(f"pystray._{name}").Icon
        if name in ("gtk", "appindicator"):
            _require_session_bus()
        _loaded[name] = icon_class
    return _loaded[name]


def _require_session_bus() -> None:
    """pystray's GTK backends connect to the D-Bus session bus (for notifications) before showing anything,
    and die without one (a bare X session with no dbus-launch): check first, so the Xlib backend is tried."""
    from gi.repository import Gio

    try:
        Gio.bus_get_sync(Gio.BusType.SESSION, None)
    except Exception as exc:  # noqa: BLE001 - GLib.Error
        raise RuntimeError(f"no D-Bus session bus ({exc})") from None


def pick_backend(names: list[str] | None = None) -> tuple[str | None, str]:
    """(the first backend that loads, "") or (None, why none did)."""
    problems = []
    for name in names or choose_backends():
        try:
            load_backend(name)
            return name, ""
        except Exception as exc:  # noqa: BLE001 - see load_backend
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return None, "; ".join(problems)


def tray_available() -> tuple[bool, str]:
    """(True, backend name) when a tray icon can be shown, else (False, why not and what still works)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, NO_DISPLAY + " (DISPLAY and WAYLAND_DISPLAY are not set)"
    name, problems = pick_backend()
    if name is None:
        if "DisplayNameError" in problems or "DisplayConnectionError" in problems:
            return False, f"{NO_DISPLAY} ({problems})"
        return False, (f"no tray backend works here ({problems}); on Linux install PyGObject and AppIndicator "
                       "(install_scripts/install-linux.sh); `avatar-cam run --no-tray` still works")
    return True, name


# --- icons ----------------------------------------------------------------------------------------------


def icon_image(state: str, size: int = 24) -> Image.Image:
    """The icon for a controller state ("stopped", "live", "silent", "paused", "error") from tray_assets/."""
    name = STATE_ICONS.get(state, "idle")
    path = paths.tray_assets_dir() / f"avatar-cam-{name}-{size}.png"
    try:
        with Image.open(path) as img:
            return img.convert("RGBA")
    except OSError as exc:  # a broken install must still show something
        log.warning("tray icon %s missing (%s): drawing a plain one", path, exc)
        colour = {"idle": (107, 114, 128), "live": (22, 163, 74), "paused": (217, 119, 6)}.get(name, (220, 38, 38))
        return Image.new("RGBA", (size, size), (*colour, 255))


# --- what the menu shows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MenuView:
    """A snapshot the menu's callables read (owned by the watch thread, replaced whole, never mutated)."""

    status: Status | None = None
    line: str = "Starting..."
    photos: tuple[Path, ...] = ()
    mics: tuple[str, ...] = ()
    ov_devices: tuple[str, ...] = ("CPU", "AUTO")
    autostart: bool | None = None  # None: the autostart module is not available
    preview: bool | None = None  # None: the controller has no preview hook


_LIST_OV_DEVICES = "import json, openvino; print(json.dumps(openvino.Core().available_devices))"


def current_microphones(in_process: bool = False) -> list[str] | None:
    """Input device names; None if listing failed.

    PortAudio lists devices once, when it starts, so a fresh list needs a fresh process (re-initialising it
    here would close the microphone stream the camera is using). `in_process`: the list this process sees."""
    from .audio_source import fresh_input_device_names, list_input_devices

    if not in_process:
        return fresh_input_device_names()

    try:
        return [d["name"] for d in list_input_devices()]
    except Exception as exc:  # noqa: BLE001 - no PortAudio: "System default" only
        log.warning("cannot list microphones: %s", exc)
        return None


def openvino_devices() -> tuple[str, ...]:
    """OpenVINO devices that exist here (CPU, GPU, GPU.1, NPU...), then AUTO, which picks among them.

    Asked in another process: the tray of a Lite-engine user should not carry OpenVINO in memory."""
    found = fresh_process.ask(_LIST_OV_DEVICES)
    if not found:
        log.warning("cannot list OpenVINO devices: offering CPU only")
        found = ["CPU"]
    return (*(str(d) for d in found if d != "AUTO"), "AUTO")


def _autostart_enabled() -> bool | None:
    try:
        from . import autostart
    except ImportError:
        return None
    try:
        return bool(autostart.is_enabled())
    except Exception as exc:  # noqa: BLE001 - show the toggle as off; toggling reports the problem
        log.warning("cannot read the autostart entry: %s", exc)
        return False


# --- helpers that wait on other programs ------------------------------------------------------------------

_TK_DIALOG = (
    "import sys, tkinter, tkinter.filedialog as fd; root = tkinter.Tk(); root.withdraw(); "
    "root.attributes('-topmost', True); "
    "print(fd.askopenfilename(parent=root, title=sys.argv[1], filetypes=[('Photos', sys.argv[2]), ('All files', '*')]))"
)


def photo_dialog_command() -> list[str] | None:
    """A command that asks for one photo and prints its path (empty or non-zero exit: cancelled)."""
    title = "Add a portrait photo"
    patterns = " ".join(f"*{s}" for s in sorted(PHOTO_SUFFIXES))
    if sys.platform.startswith("linux"):
        if shutil.which("zenity"):
            return ["zenity", "--file-selection", f"--title={title}", f"--file-filter=Photos | {patterns}"]
        if shutil.which("kdialog"):
            return ["kdialog", "--title", title, "--getopenfilename", str(Path.home()), f"{patterns}|Photos"]
    if importlib.util.find_spec("tkinter") is not None:
        return [sys.executable, "-c", _TK_DIALOG, title, patterns]
    return None


def open_in_desktop(path: Path) -> None:
    """Open a file or folder with the desktop's default application; raises AvatarCamError if there is none."""
    if sys.platform.startswith("win"):
        os.startfile(str(path))  # noqa: S606 - the documented way on Windows
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        raise AvatarCamError(f"cannot open {path}: {opener} is not installed", hint="install xdg-utils, or open it by hand")
    proc = subprocess.Popen([opener, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    threading.Thread(target=proc.wait, name="opener-reaper", daemon=True).start()


# --- the tray -------------------------------------------------------------------------------------------


class TrayApp:
    def __init__(self, controller: Controller, backend: str | None = None):
        self.controller = controller
        if backend is None:
            backend, problems = pick_backend()
            if backend is None:
                raise AvatarCamError(f"cannot show a tray icon: {problems}", hint="`avatar-cam run --no-tray` still works")
        self.backend = backend
        self.icon_size = BACKEND_ICON_SIZE.get(backend, 32)
        self.view = MenuView(photos=tuple(photo_library()), autostart=_autostart_enabled(), preview=self._preview_state())
        self._commands = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tray-commands")
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._busy: str | None = None  # what the command thread is doing, for the status line
        self._error: tuple[str, float] | None = None  # the last failed command's message, and when
        self._dialog_open = threading.Lock()
        self._shown_icon = STATE_ICONS["stopped"]  # what the icon is created with, below
        self._shown_signature: tuple | None = None
        self._stop_requested = False
        self._watch: threading.Thread | None = None
        self._mics: tuple[str, ...] = ()  # written by the devices thread only
        self._ov_devices: tuple[str, ...] = ("CPU", "AUTO")
        icon_class = load_backend(backend)  # before anything else imports pystray (see load_backend)
        self.icon = icon_class("avatar-cam", icon=icon_image("stopped", self.icon_size), title=TITLE, menu=self._menu())
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
                _drain_gtk_events()
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
        settings = self.controller.settings
        camera_on = settings.camera_on  # quitting is not "Stop camera": the next start restores the camera
        try:
            self.controller.stop()
            if settings.camera_on != camera_on:
                settings.camera_on = camera_on
                if self.controller.persist:
                    settings.save()
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
            from . import autostart

            autostart.set_enabled(not autostart.is_enabled())

        self.do(toggle)

    def toggle_preview(self) -> None:
        if hasattr(self.controller, "set_preview"):
            self.do(lambda: self.controller.set_preview(not self._preview_state()))

    def _preview_state(self) -> bool | None:
        if not hasattr(self.controller, "set_preview"):
            return None
        return bool(getattr(self.controller, "preview", False))

    # --- the menu -------------------------------------------------------------------------------------------
    def _menu(self):
        from pystray import Menu
        from pystray import MenuItem as Item

        s = self.controller.settings  # read-only here: plain attribute reads, no lock
        view = lambda: self.view  # noqa: E731 - always the newest snapshot

        def act(fn, *args, **kwargs):
            """A menu action running `fn(*args, **kwargs)` on the command thread (pystray calls it with icon, item)."""
            return lambda _icon, _item: self.do(fn, *args, **kwargs)

        def photo_items():
            current = _file_key(s.photo)
            for path in view().photos:
                yield Item(path.name, act(self.controller.set_photo, path, busy="Switching photo..."),
                           checked=lambda _it, p=path: _file_key(p) == current, radio=True)
            if s.photo and current not in {_file_key(p) for p in view().photos}:
                yield Item(f"{Path(s.photo).name} (not in the folder)", None, checked=lambda _it: True, radio=True)
            yield Menu.SEPARATOR
            yield Item("Add photo...", lambda: self.add_photo())
            yield Item("Open photos folder", lambda: self.open_photos_folder())

        def mic_items():
            yield Item("System default", lambda: self.do(self.controller.set_mic, None),
                       checked=lambda _it: s.mic is None, radio=True)
            names = view().mics
            for name in names:
                yield Item(name, act(self.controller.set_mic, name),
                           checked=lambda _it, n=name: s.mic == n, radio=True)
            if s.mic is not None and s.mic not in names:
                yield Item(f"{s.mic} (not found)", None, checked=lambda _it: True, radio=True, enabled=False)

        def camera_items():
            sizes = list(RESOLUTIONS) if (s.width, s.height) in RESOLUTIONS else [(s.width, s.height), *RESOLUTIONS]
            for w, h in sizes:
                yield Item(f"{w} x {h}", act(self.controller.update_settings, width=w, height=h),
                           checked=lambda _it, w=w, h=h: (s.width, s.height) == (w, h), radio=True)
            yield Menu.SEPARATOR
            rates = list(FRAME_RATES) if float(s.fps) in FRAME_RATES else [s.fps, *FRAME_RATES]
            for fps in rates:
                yield Item(f"{fps:g} fps", act(self.controller.update_settings, fps=float(fps)),
                           checked=lambda _it, f=fps: float(s.fps) == float(f), radio=True)
            yield Menu.SEPARATOR
            yield Item("Mirror", lambda: self.toggle_mirror(), checked=lambda _it: bool(s.mirror))

        def engine_items():
            for key, label in ENGINES:
                yield Item(label, act(self.controller.set_engine, key, busy=f"Loading {label}..."),
                           checked=lambda _it, k=key: s.engine == k, radio=True)
            yield Menu.SEPARATOR
            devices = view().ov_devices if s.device in view().ov_devices else (*view().ov_devices, s.device)
            for dev in devices:
                yield Item(f"OpenVINO device: {dev}", act(self.controller.update_settings, device=dev),
                           checked=lambda _it, d=dev: s.device == d, radio=True)

        def items():
            yield Item(lambda _it: self.view.line, None, enabled=False)
            yield Item(lambda _it: "Stop camera" if self.controller.running else "Start camera", lambda: self.toggle_camera())
            yield Item(lambda _it: "Resume" if self.view.status and self.view.status.state == "paused" else "Pause",
                       lambda: self.toggle_pause(), enabled=lambda _it: self.controller.running)
            yield Menu.SEPARATOR
            yield Item("Photo", Menu(photo_items))
            yield Item("Microphone", Menu(mic_items))
            yield Item("Camera", Menu(camera_items))
            yield Item("Engine", Menu(engine_items))
            yield Menu.SEPARATOR
            yield Item("Show preview", lambda: self.toggle_preview(), checked=lambda _it: bool(self.view.preview),
                       enabled=lambda _it: self.view.preview is not None)
            yield Item("Avatar Cam Microphone", lambda: self.toggle_virtual_mic(), checked=lambda _it: bool(s.virtual_mic))
            yield Item("Start at login", lambda: self.toggle_autostart(), checked=lambda _it: bool(self.view.autostart),
                       enabled=lambda _it: self.view.autostart is not None)
            yield Item("Open log", lambda: self.open_log())
            yield Menu.SEPARATOR
            yield Item("Quit", lambda: self.quit())

        return Menu(lambda: tuple(items()))

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
            ov_devices=self._ov_devices, autostart=_autostart_enabled(), preview=self._preview_state()), self.view
        if STATE_ICONS.get(status.state) != self._shown_icon:
            self._shown_icon = STATE_ICONS.get(status.state)
            self.icon.icon = icon_image(status.state, self.icon_size)
        self.icon.title = f"{TITLE}: {self.view.line}"
        s = self.controller.settings
        # Not the raw state: live <-> silent flips as the user talks, and changes only the status line.
        signature = (status.state == "paused", status.photo, status.mic, status.engine, status.device, self.controller.running,
                     self.view.photos, self.view.mics, self.view.ov_devices, self.view.autostart, self.view.preview,
                     s.width, s.height, s.fps, s.mirror, s.engine, s.device, s.mic, s.photo, s.virtual_mic)
        if signature != self._shown_signature:
            self._shown_signature = signature
            self.icon.update_menu()
        elif self.view.line != old.line:
            self._set_status_label(self.view.line)

    def _line(self, status: Status) -> str:
        if self._busy:
            return self._busy
        if self._error is not None:
            message, when = self._error
            if time.monotonic() - when < ERROR_SHOWN_S:
                return _shorten(f"Error: {message}")
            self._error = None
        return _shorten(status.line())

    def _set_status_label(self, text: str) -> None:
        """Change only the status line. Rebuilding a GTK menu every second would close it under the user's
        pointer (and make AppIndicator hosts flicker), so the label of the existing item is set in place."""
        handle = getattr(self.icon, "_menu_handle", None)
        if self.backend in ("gtk", "appindicator") and handle is not None:
            from gi.repository import GLib

            def set_label() -> bool:
                children = handle.get_children()
                if children:
                    children[0].set_label(text)
                return False

            GLib.idle_add(set_label)
        elif getattr(self.icon, "HAS_MENU", False):
            self.icon.update_menu()


def _drain_gtk_events(budget_s: float = 1.0) -> None:
    """Let GTK finish what the loop left pending (hiding the icon) after the loop ended, so that a stopped
    icon leaves the panel now and not whenever the process exits."""
    from gi.repository import Gdk, GLib

    context, deadline = GLib.MainContext.default(), time.monotonic() + budget_s
    while context.pending() and time.monotonic() < deadline:
        context.iteration(False)
    display = Gdk.Display.get_default()
    if display is not None:
        display.flush()


def _file_key(path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).expanduser().resolve())
    except OSError:
        return str(path)


def _shorten(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_tray(controller: Controller, link=None) -> int:
    """Show the tray for `controller` on this (the main) thread; returns 0 after Quit or `link.stop()`.

    `link` (daemon.TrayLink) receives `show` (a second instance started) and `stop` (quit requested elsewhere).
    """
    app = TrayApp(controller)
    if link is not None:
        link.show = app.show
        link.stop = app.stop
    return app.run()
