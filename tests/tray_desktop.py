"""The virtual desktop the tray tests run on (/work/shared/TESTING.md, "Tray under a virtual screen"), and their
helpers: Xvfb, trayer (an XEmbed system tray), a private D-Bus session bus with a stand-in notification service
(a small D-Bus server that writes down what it is asked to show), a camera that keeps recent frames, and the
menu, screenshot and icon helpers. The fixtures that start them are in conftest.py; the tests in test_tray.py.
"""

from __future__ import annotations

import collections
import json
import os
import select
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import camera_recorder
import numpy as np
from PIL import Image

from avatar_cam.tray import app as tray
from avatar_cam.tray import backends

RUN_PRODUCT = Path(__file__).with_name("run_product.py")  # the real CLI with the recording camera registered
TRAY_HEIGHT = 32
TRAY_WIDTH = 200
SCREEN = (640, 480)
TIMEOUT = 30.0  # generous: a loaded 2-core CI machine
NOTIFY_SERVER = r'''
import json, sys
from gi.repository import Gio, GLib
XML = """<node><interface name="org.freedesktop.Notifications">
<method name="Notify"><arg type="s" direction="in"/><arg type="u" direction="in"/><arg type="s" direction="in"/>
<arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="as" direction="in"/>
<arg type="a{sv}" direction="in"/><arg type="i" direction="in"/><arg type="u" direction="out"/></method>
<method name="CloseNotification"><arg type="u" direction="in"/></method>
<method name="GetCapabilities"><arg type="as" direction="out"/></method>
<method name="GetServerInformation"><arg type="s" direction="out"/><arg type="s" direction="out"/>
<arg type="s" direction="out"/><arg type="s" direction="out"/></method>
</interface></node>"""
node = Gio.DBusNodeInfo.new_for_xml(XML)
log = open(sys.argv[1], "a")
shown = [0]
def call(conn, sender, path, iface, method, params, invocation):
    if method == "Notify":
        values = params.unpack()
        shown[0] += 1
        log.write(json.dumps({"title": values[3], "message": values[4]}) + "\n")
        log.flush()
        invocation.return_value(GLib.Variant("(u)", (shown[0],)))
    elif method == "GetCapabilities":
        invocation.return_value(GLib.Variant("(as)", (["body"],)))
    elif method == "GetServerInformation":
        invocation.return_value(GLib.Variant("(ssss)", ("test", "avatar-cam tests", "1", "1.2")))
    else:
        invocation.return_value(None)
def bus(conn, name):
    conn.register_object("/org/freedesktop/Notifications", node.interfaces[0], call, None, None)
def owned(conn, name):
    print("ready", flush=True)
Gio.bus_own_name(Gio.BusType.SESSION, "org.freedesktop.Notifications", Gio.BusNameOwnerFlags.NONE, bus, owned,
                 lambda *a: sys.exit("lost the notification name"))
GLib.MainLoop().run()
'''


# --- the virtual desktop ------------------------------------------------------------------------------


@dataclass
class Desktop:
    display: str
    workdir: Path
    notifications_file: Path

    def screenshot(self, name: str) -> np.ndarray:
        """The whole screen as RGB, also kept as <workdir>/<name>.png to look at."""
        path = self.workdir / f"{name}.png"
        subprocess.run(["import", "-window", "root", str(path)], check=True, timeout=30)
        return np.asarray(Image.open(path).convert("RGB"))

    def notifications(self) -> list[dict]:
        if not self.notifications_file.exists():
            return []
        return [json.loads(line) for line in self.notifications_file.read_text().splitlines() if line.strip()]


def read_line(stream, timeout: float, what: str) -> str:
    if not select.select([stream], [], [], timeout)[0]:
        raise RuntimeError(f"{what} said nothing within {timeout} s")
    return stream.readline().decode().strip()


def start_xvfb(width: int, height: int, logs) -> tuple[subprocess.Popen, str]:
    """An Xvfb server on a free display number (it picks one and tells us): the process and ":N"."""
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=logs, stderr=logs)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as numbers:
            return xvfb, ":" + read_line(numbers, TIMEOUT, "Xvfb")
    except BaseException:
        stop_all([xvfb])
        raise


def stop_all(procs: list[subprocess.Popen]) -> None:
    from pulse import terminate  # (here: conftest imports this module before pytest loads pulse as its plugin)

    for proc in reversed(procs):
        terminate(proc)


def selection_owned(display: str, selection: str) -> bool:
    """Whether a program holds an X manager selection: the tray's `_NET_SYSTEM_TRAY_S0`, the window manager's
    `WM_S0` (ICCCM)."""
    import Xlib.display
    import Xlib.X

    d = Xlib.display.Display(display)
    try:
        return d.get_selection_owner(d.intern_atom(selection)) != Xlib.X.NONE
    finally:
        d.close()


def release_gtk() -> None:
    """Close GTK's connection to the display we are about to kill (else GTK exits the process later)."""
    if "gi.repository.Gdk" in sys.modules or "gi.repository.Gtk" in sys.modules:
        from gi.repository import Gdk

        display = Gdk.Display.get_default()
        if display is not None:
            with warnings.catch_warnings():  # GLib complains about widgets it disposes on the way: harmless
                warnings.simplefilter("ignore")
                display.close()


# --- the camera, the tray and its menu ------------------------------------------------------------------


class RecentFramesCamera(camera_recorder.RecordingCamera):
    """The recording camera, keeping only recent frames (a whole test at 15 fps would be hundreds of MB)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.frames = collections.deque(maxlen=150)
        self.lock = threading.Lock()

    def send(self, frame) -> None:
        with self.lock:
            self.times.append(time.monotonic())
            self.frames.append((self.times[-1], np.asarray(frame).reshape(self.shape).copy()))

    def since(self, t: float) -> list[tuple[float, np.ndarray]]:
        with self.lock:
            return [(ft, f) for ft, f in self.frames if ft > t]


def menu_item(app: tray.TrayApp, *texts: str):
    """The pystray item at a path of labels, e.g. ("Photo", "b.png")."""
    menu = app.icon.menu
    for i, text in enumerate(texts):
        found = [item for item in menu if item.text == text]
        assert found, f"no {text!r} in the menu; it has {[item.text for item in menu]}"
        if i < len(texts) - 1:
            menu = found[0].submenu
    return found[0]


def is_checked(app: tray.TrayApp, *texts: str) -> bool:
    """Whether the item exists and is checked (False while the menu does not list it yet)."""
    try:
        return bool(menu_item(app, *texts).checked)
    except AssertionError:
        return False


def click(app: tray.TrayApp, *texts: str) -> float:
    """Activate a menu item as its click would (the action runs on the command thread); returns when."""
    t = time.monotonic()
    menu_item(app, *texts)(app.icon)
    return t


def run_tray(app: tray.TrayApp, drive) -> None:
    """Run the tray on this (the main) thread while `drive()` runs on another; re-raise what `drive` raised."""
    failure: list[BaseException] = []

    def driver() -> None:
        try:
            drive()
        except BaseException as exc:  # noqa: BLE001 - reported on the main thread below
            failure.append(exc)
            app.quit()

    watchdog = threading.Timer(240, app.stop)  # a hung test must still end
    watchdog.start()
    thread = threading.Thread(target=driver, name="test-driver", daemon=True)
    thread.start()
    try:
        assert app.run() == 0
    finally:
        watchdog.cancel()
        thread.join(TIMEOUT)
        # The tray's own threads end soon after it (then the fixture's gc.collect can free the icon).
        for t in threading.enumerate():
            if t.name.startswith("tray-"):
                t.join(TIMEOUT)
    if failure:
        raise failure[0]
    assert not thread.is_alive(), "the test driver did not finish"


def find_icon(shot: np.ndarray, state: str, size: int = 24) -> tuple[int, int] | None:
    """(x, y) of the top-left corner where the tray shows the `state` icon, or None.

    Every opaque pixel must match exactly (within 2/255); the anti-aliased rim is left out, as backends blend it
    with the panel differently (pystray's Xlib backend has no alpha)."""
    strip = shot[:TRAY_HEIGHT, :TRAY_WIDTH].astype(np.int16)
    icon = np.asarray(backends.icon_image(state, size)).astype(np.int16)
    opaque = icon[..., 3] == 255
    want = icon[..., :3][opaque]
    for y in range(TRAY_HEIGHT - size + 1):
        for x in range(TRAY_WIDTH - size + 1):
            if np.abs(strip[y : y + size, x : x + size][opaque] - want).max() <= 2:
                return x, y
    return None


def badge_pixels(shot: np.ndarray, state: str) -> int:
    """How many tray pixels have the `state` icon's badge colour (its most common opaque colour)."""
    icon = np.asarray(backends.icon_image(state, 64))
    colours, counts = np.unique(icon[icon[..., 3] == 255][:, :3], axis=0, return_counts=True)
    badge = colours[counts.argmax()].astype(int)
    strip = shot[:TRAY_HEIGHT, :TRAY_WIDTH].astype(int)
    return int((np.abs(strip - badge).max(axis=2) <= 3).sum())


def menu_rows(shot: np.ndarray) -> list[tuple[int, int]]:
    """The (x, y) centres of the text rows of the open GTK menu (light, on the black root below the tray)."""
    below = shot[TRAY_HEIGHT:].astype(int)
    light = below.min(axis=2) > 200
    ys, xs = np.nonzero(light)
    assert len(ys), "no menu on the screen"
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    inside = below[top + 2 : bottom - 1, left + 4 : right - 4]
    ink = (inside.max(axis=2) < 200).any(axis=1)  # rows with text, checkboxes or arrows
    rows, start = [], None
    for y, on in enumerate([*ink, False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            if y - start >= 5:  # separators are 1-2 px lines
                rows.append((left + 40, TRAY_HEIGHT + top + 2 + (start + y) // 2))
            start = None
    return rows


def preview_window(desktop: Desktop) -> str | None:
    """The X window id of the preview window, or None."""
    found = subprocess.run(["xdotool", "search", "--name", "Avatar Cam preview"], capture_output=True, text=True,
                           env={**os.environ, "DISPLAY": desktop.display}, timeout=30)
    return found.stdout.split()[-1] if found.returncode == 0 and found.stdout.split() else None


def window_shows(desktop: Desktop, window: str, picture: np.ndarray) -> bool:
    """Whether a screenshot of the window holds the picture's lower half, less a margin at the sides (the tray's
    panel may cover the window's top; on the 640-pixel screen the window manager trims a window as wide)."""
    import cv2

    shot = desktop.workdir / "window.png"
    if subprocess.run(["import", "-window", window, str(shot)], env={**os.environ, "DISPLAY": desktop.display},
                      timeout=30).returncode != 0:
        return False
    margin = picture.shape[1] // 20
    image, lower_half = cv2.imread(str(shot)), picture[picture.shape[0] // 2:, margin:picture.shape[1] - margin]
    if image is None or image.shape[0] < lower_half.shape[0] or image.shape[1] < lower_half.shape[1]:
        return False
    return cv2.matchTemplate(image, lower_half, cv2.TM_CCOEFF_NORMED).max() > 0.95


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=30)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
