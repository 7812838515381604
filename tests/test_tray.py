"""The real tray on a virtual screen (/work/shared/TESTING.md, "Tray under a virtual screen").

Real: Xvfb, trayer (an XEmbed system tray), a private D-Bus session bus, pystray's GTK backend with its
right-click menu (opened and clicked with xdotool), the controller, the lite engine and a PulseAudio
microphone. Stand-ins: the camera device (tests/camera_recorder.py) and the desktop's notification service
(a small D-Bus server that writes down what it is asked to show).

GTK opens one display per process and exits when that display dies, so one virtual desktop serves the whole
module and GTK lets go of it before the desktop is torn down. pystray wants its loop on the main thread, so
each test runs the tray there (`app.run()`) and drives it from a second thread (`drive`).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import camera_recorder
import cv2
import numpy as np
import pytest
from helpers import wait_for
from PIL import Image
from pulse import terminate

from avatar_cam import paths
from avatar_cam.daemon.controller import Controller
from avatar_cam.daemon.photos import photos_dir
from avatar_cam.settings import Settings
from avatar_cam.tray import app as tray
from avatar_cam.tray import backends

# pystray's GTK backends use GtkStatusIcon, GObject.idle_add and AppIndicator calls that are deprecated (and work).
pytestmark = [pytest.mark.filterwarnings(r"ignore:(Gtk|AyatanaAppIndicator3)\..* is deprecated"),
              pytest.mark.filterwarnings(r"ignore:GObject\.idle_add is deprecated")]

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


def _read_line(stream, timeout: float, what: str) -> str:
    if not select.select([stream], [], [], timeout)[0]:
        raise RuntimeError(f"{what} said nothing within {timeout} s")
    return stream.readline().decode().strip()


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        terminate(proc)


def _tray_manager_running(display: str) -> bool:
    import Xlib.display
    import Xlib.X

    d = Xlib.display.Display(display)
    try:
        return d.get_selection_owner(d.intern_atom("_NET_SYSTEM_TRAY_S0")) != Xlib.X.NONE
    finally:
        d.close()


def _release_gtk() -> None:
    """Close GTK's connection to the display we are about to kill (else GTK exits the process later)."""
    if "gi.repository.Gdk" in sys.modules or "gi.repository.Gtk" in sys.modules:
        from gi.repository import Gdk

        display = Gdk.Display.get_default()
        if display is not None:
            with warnings.catch_warnings():  # GLib complains about widgets it disposes on the way: harmless
                warnings.simplefilter("ignore")
                display.close()


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory):
    missing = [t for t in ("Xvfb", "trayer", "xdotool", "import", "dbus-daemon") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install them (tests/run.sh lists the packages)", pytrace=False)
    workdir = tmp_path_factory.mktemp("desktop")
    procs: list[subprocess.Popen] = []
    logs = open(workdir / "desktop.log", "wb")  # noqa: SIM115 - closed in finally
    try:
        r, w = os.pipe()  # Xvfb picks a free display number and writes it here
        procs.append(subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
            pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=logs, stderr=logs))
        os.close(w)
        with os.fdopen(r, "rb") as numbers:
            display = ":" + _read_line(numbers, TIMEOUT, "Xvfb")
        env = {**os.environ, "DISPLAY": display, "NO_AT_BRIDGE": "1"}
        dbus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logs, env=env)
        procs.append(dbus)
        env["DBUS_SESSION_BUS_ADDRESS"] = _read_line(dbus.stdout, TIMEOUT, "dbus-daemon")
        notifications = workdir / "notifications.jsonl"
        notifyd = subprocess.Popen([sys.executable, "-c", NOTIFY_SERVER, str(notifications)], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logs)
        procs.append(notifyd)
        assert _read_line(notifyd.stdout, TIMEOUT, "the notification server") == "ready"
        procs.append(subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "left", "--widthtype", "pixel", "--width", str(TRAY_WIDTH),
             "--height", str(TRAY_HEIGHT), "--transparent", "false", "--expand", "false"],
            env=env, stdin=subprocess.DEVNULL, stdout=logs, stderr=logs))
        deadline = time.monotonic() + TIMEOUT
        while not _tray_manager_running(display):
            assert time.monotonic() < deadline, f"trayer never took the tray: {(workdir / 'desktop.log').read_text()}"
            time.sleep(0.05)
        with pytest.MonkeyPatch.context() as mp:
            for var in ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "NO_AT_BRIDGE"):
                mp.setenv(var, env[var])
            mp.delenv("PYSTRAY_BACKEND", raising=False)
            yield Desktop(display, workdir, notifications)
            # Icons left for the garbage collector must go while their display lives: pystray's Xlib icon
            # raises from __del__ otherwise, and a traceback formatted inside a GC pass inside ast.parse
            # breaks CPython 3.11's AST recursion check ("AST constructor recursion depth mismatch").
            gc.collect()
            _release_gtk()
    finally:
        _stop(procs)
        logs.close()
    assert all(p.poll() is not None for p in procs)


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


@pytest.fixture()
def camera_backend():
    camera_recorder.register()
    import pyvirtualcam

    pyvirtualcam.register_backend(camera_recorder.BACKEND, RecentFramesCamera)
    return RecentFramesCamera


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


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=30)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture()
def photos(astronaut_png: Path) -> tuple[Path, Path]:
    """The astronaut in the library, and a mirrored astronaut (a different picture of a face) beside it."""
    folder = photos_dir()
    folder.mkdir(parents=True)
    first = folder / "astronaut.png"
    shutil.copy(astronaut_png, first)
    mirrored = folder.parent / "astronaut-mirrored.png"  # dropped into the folder later, by the test
    cv2.imwrite(str(mirrored), np.ascontiguousarray(cv2.imread(str(astronaut_png))[:, ::-1]))
    return first, mirrored


@pytest.fixture()
def still_idle(monkeypatch: pytest.MonkeyPatch):
    """No idle motion (blinks, sway), so the idle face is one fixed picture that paused frames must equal.

    Settings carry the user's choice; the renderer default is patched too, for a controller that does not pass
    those settings on yet."""
    from avatar_cam.live import renderer
    from avatar_cam.video.idle_motion import IdleSettings

    monkeypatch.setattr(renderer, "IdleSettings", IdleSettings.off)
    return {"idle_blinks": False, "idle_head_motion": False, "idle_breathing": False}


@pytest.fixture(scope="module")
def long_speech(speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test speech three times over (~20 s), so it is still playing through every step that needs it."""
    out = tmp_path_factory.mktemp("speech") / "speech_x3.wav"
    subprocess.run(["sox", str(speech_wav), str(speech_wav), str(speech_wav), str(out)], check=True)
    return out


# --- tests ----------------------------------------------------------------------------------------------


def test_backend_choice_follows_the_desktop():
    assert backends.choose_backends({"XDG_CURRENT_DESKTOP": "ubuntu:GNOME", "DISPLAY": ":0"}, "linux")[0] == "appindicator"
    assert backends.choose_backends({"XDG_SESSION_TYPE": "wayland", "DISPLAY": ":0"}, "linux")[0] == "appindicator"
    assert backends.choose_backends({"XDG_CURRENT_DESKTOP": "XFCE", "DISPLAY": ":0"}, "linux") == ["gtk", "xorg"]
    assert backends.choose_backends({"PYSTRAY_BACKEND": "xorg", "XDG_CURRENT_DESKTOP": "GNOME"}, "linux") == ["xorg"]
    assert backends.choose_backends({}, "win32") == ["win32"]
    assert backends.choose_backends({}, "darwin") == ["darwin"]


def test_without_a_display_the_tray_says_why_and_what_still_works():
    # A fresh process: pystray and GTK decide about the display once, when first imported.
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
    code = "from avatar_cam.tray import backends; print(repr(backends.tray_available()))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ok, reason = eval(done.stdout)  # noqa: S307 - our own repr of (bool, str)
    assert ok is False
    assert reason.startswith("no display: the tray cannot show") and "avatar-cam run --no-tray" in reason
    # And when a DISPLAY is set but nothing answers there, pystray raises Xlib's DisplayNameError: still a reason.
    env["DISPLAY"] = "nothing-here"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ok, reason = eval(done.stdout)  # noqa: S307
    assert ok is False and "avatar-cam run --no-tray" in reason, reason


def test_committed_icons_are_what_make_icons_draws():
    sys.path.insert(0, str(paths.tray_assets_dir()))
    try:
        import make_icons
    finally:
        sys.path.pop(0)
    for state in make_icons.STATES:
        for size in make_icons.SIZES:
            path = make_icons.png_path(state, size, paths.tray_assets_dir())
            committed = np.asarray(Image.open(path).convert("RGBA"))
            assert committed.shape == (size, size, 4)
            assert np.array_equal(committed, np.asarray(make_icons.draw_icon(state, size))), f"{path.name} is stale"
            # The badge colour fills most of the icon: the state reads at a glance, even at 16 px.
            fill = np.array(make_icons.STATES[state][0])
            assert (np.abs(committed[..., :3].astype(int) - fill).max(axis=2) < 8).mean() > 0.4
        with Image.open(paths.tray_assets_dir() / f"avatar-cam-{state}.ico") as ico:
            assert set(make_icons.ICO_SIZES) <= {w for w, _ in ico.info["sizes"]}
            ico.size = (16, 16)  # each size drawn for itself, not scaled from 256 px
            assert np.array_equal(np.asarray(ico.convert("RGBA")), np.asarray(make_icons.draw_icon(state, 16)))


XORG_DEADLOCKS = ("pystray's Xlib backend deadlocks about 1 run in 3 here (its loop thread and the caller share one "
                  "python-xlib connection; a 15-line pystray-only script hangs the same way), so CI cannot use it")


@pytest.mark.parametrize("backend", ["gtk", "appindicator", pytest.param("xorg", marks=pytest.mark.skip(reason=XORG_DEADLOCKS))])
def test_icon_docks_and_follows_the_state(desktop, backend):
    """Each Linux backend docks in an X11 tray (AppIndicator falls back to a plain tray icon when no
    StatusNotifier host runs), shows the icon of the controller's state, and leaves the panel on Quit."""
    controller = Controller(Settings(camera_on=False, engine="lite"))
    app = tray.TrayApp(controller, backend=backend)
    size = backends.BACKEND_ICON_SIZE[backend]
    # GTK shows our 24 px icon as it is, pixel for pixel. The others scale it to their slot (AppIndicator's
    # fallback to 30 x 30; pystray's Xlib backend stretches it to the window, 24 x 30 in this trayer).
    shows = (lambda shot, state: find_icon(shot, state, size) is not None) if backend == "gtk" \
        else (lambda shot, state: badge_pixels(shot, state) > 0.4 * 24 * 24)

    def drive() -> None:
        wait_for(lambda: shows(desktop.screenshot(f"dock-{backend}"), "stopped"), f"the {backend} icon")
        click(app, "Start camera")  # no photo in this fresh home: the start fails, the tray says why
        wait_for(lambda: shows(desktop.screenshot(f"dock-{backend}-error"), "error"), "the error icon")
        wait_for(lambda: app.view.line.startswith("Error: no photo chosen yet"), "the error in the status line")
        app.quit()

    run_tray(app, drive)
    shot = desktop.screenshot(f"dock-{backend}-gone")
    assert badge_pixels(shot, "error") == 0 and badge_pixels(shot, "stopped") == 0, "the icon stayed after Quit"


@pytest.mark.slow
def test_menu_drives_the_real_camera(desktop, pulse_server, camera_backend, photos, still_idle, long_speech):
    first, mirrored = photos
    settings = Settings(camera_backend=camera_recorder.BACKEND, engine="lite", width=640, height=360, fps=15.0,
                        camera_on=False, **still_idle)
    controller = Controller(settings)
    app = tray.TrayApp(controller, backend="gtk")
    seen = {}

    def camera() -> RecentFramesCamera:
        assert len(camera_backend.instances) == 1, "the camera was reopened"
        return camera_backend.instances[0]

    def drive() -> None:
        # The icon docks in the tray, pixel for pixel the idle icon.
        where = wait_for(lambda: find_icon(desktop.screenshot("1-idle"), "stopped"), "the idle icon in the tray")
        centre = (where[0] + 12, where[1] + 12)
        wait_for(lambda: app.view.status is not None, "the first status")

        # Start camera, clicked in the real GTK menu: right-click the icon, then the row of "Start camera".
        xdotool("mousemove", str(centre[0]), str(centre[1]), "click", "3")
        rows = wait_for(lambda: menu_rows(desktop.screenshot("2-menu")), "the menu to open")
        from pystray import Menu

        labels = [item.text for item in app.icon.menu if item is not Menu.SEPARATOR]
        assert len(rows) == len(labels), (rows, labels)
        x, y = rows[labels.index("Start camera")]
        xdotool("mousemove", str(x), str(y), "click", "1")
        wait_for(lambda: camera_backend.instances and len(camera_backend.instances[0].times) > 15, "frames after Start")
        wait_for(lambda: find_icon(desktop.screenshot("3-live"), "live"), "the live icon")
        wait_for(lambda: app.view.line.startswith("Silent:"), "the status line to say Silent")
        assert menu_item(app, "Stop camera")
        t = time.monotonic()
        idle_first = wait_for(lambda: camera().since(t)[-1:], "a frame")[0][1]

        # A photo dropped into the folder appears in the menu; choosing it switches the face, not the camera.
        shutil.move(mirrored, photos_dir() / mirrored.name)
        wait_for(lambda: any(p.name == mirrored.name for p in app.view.photos), "the dropped photo in the menu", 10)
        assert menu_item(app, "Photo", first.name).checked and not menu_item(app, "Photo", mirrored.name).checked
        clicked = click(app, "Photo", mirrored.name)
        new_face = wait_for(lambda: [(ft, f) for ft, f in camera().since(clicked) if mean_difference(f, idle_first) > 10],
                            "frames of the new face")
        seen["photo switch s"] = new_face[0][0] - clicked
        assert seen["photo switch s"] < 1.0, f"the new face took {seen['photo switch s']:.2f} s"
        wait_for(lambda: is_checked(app, "Photo", mirrored.name), "the new photo checked in the menu")
        assert not camera().closed
        t = time.monotonic()
        idle_second = wait_for(lambda: camera().since(t + 0.3)[-1:], "a frame")[0][1]

        # Someone speaks: the mouth moves. Pause: frames keep coming, every one the idle face.
        player = pulse_server.play(long_speech)
        try:
            t = time.monotonic()
            wait_for(lambda: any(mean_difference(f, idle_second) > 0 for _, f in camera().since(t)), "a talking frame")
            clicked = click(app, "Pause")
            wait_for(lambda: app.view.status.state == "paused", "the paused state")
            wait_for(lambda: find_icon(desktop.screenshot("4-paused"), "paused"), "the paused icon")
            t = time.monotonic()
            time.sleep(1.5)
            paused = camera().since(t)
            assert len(paused) >= 10, f"only {len(paused)} frames in 1.5 s while paused"
            assert all(np.array_equal(f, idle_second) for _, f in paused), "a paused frame is not the idle face"
            assert player.poll() is None, "the speech ended too soon to show anything"
            assert menu_item(app, "Resume")
            click(app, "Resume")
            t = time.monotonic()
            wait_for(lambda: any(mean_difference(f, idle_second) > 0 for _, f in camera().since(t)), "talking after Resume")

            # Another microphone: the camera stays open and the new one is heard.
            assert menu_item(app, "Microphone", "System default").checked
            click(app, "Microphone", "pulse")
            wait_for(lambda: app.view.status.mic == "pulse", "the status to name the new microphone")
            assert menu_item(app, "Microphone", "pulse").checked
            t = time.monotonic()
            wait_for(lambda: any(mean_difference(f, idle_second) > 0 for _, f in camera().since(t)), "talking on the new mic")
        finally:
            player.kill()
            player.wait()
        assert not camera().closed

        # A photo with no face: a notification and the status line say so; the camera keeps running.
        cv2.imwrite(str(photos_dir() / "cat.png"), cv2.cvtColor(_chelsea(), cv2.COLOR_RGB2BGR))
        wait_for(lambda: any(p.name == "cat.png" for p in app.view.photos), "the cat in the menu", 10)
        click(app, "Photo", "cat.png")
        wait_for(lambda: app.view.line.startswith("Error:"), "the error in the status line")
        wait_for(lambda: any("face" in n["message"].lower() for n in desktop.notifications()), "a notification")
        assert menu_item(app, "Photo", mirrored.name).checked and controller.settings.photo.endswith(mirrored.name)
        t = time.monotonic()
        wait_for(lambda: len(camera().since(t)) > 5, "frames after the error")
        seen["camera"] = camera()

        click(app, "Quit")

    run_tray(app, drive)
    # Quit stopped the camera and closed it, and the next start brings it back (camera_on kept).
    assert seen["camera"].closed and not controller.running
    assert Settings.load().camera_on is True and Settings.load().mic == "pulse"
    print(f"photo switch: first frame of the new face {seen['photo switch s'] * 1000:.0f} ms after the click")


def _chelsea() -> np.ndarray:
    from skimage import data

    return data.chelsea()


def test_menu_settings_dialog_and_helpers(desktop, camera_backend, photos, tmp_path, monkeypatch):
    """Everything else in the menu, with the camera off: each choice lands in the settings file."""
    first, mirrored = photos
    bin_dir = tmp_path / "bin"  # stand-ins for the desktop's file dialog and opener, recording how they were run
    bin_dir.mkdir()
    opened = tmp_path / "opened.txt"
    (bin_dir / "zenity").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/zenity-args.txt\necho '{mirrored}'\n")
    (bin_dir / "xdg-open").write_text(f"#!/bin/sh\necho \"$1\" >> {opened}\n")
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    controller = Controller(Settings(camera_backend=camera_recorder.BACKEND, engine="lite", camera_on=False))
    app = tray.TrayApp(controller, backend="gtk")

    def drive() -> None:
        wait_for(lambda: app.view.status is not None, "the first status")
        assert app.view.line == "Camera off" and not menu_item(app, "Pause").enabled

        click(app, "Photo", "Add photo...")
        wait_for(lambda: controller.settings.photo and controller.settings.photo.endswith(mirrored.name), "the added photo")
        assert (photos_dir() / mirrored.name).is_file(), "Add photo copies into the library"
        wait_for(lambda: is_checked(app, "Photo", mirrored.name), "the added photo checked")
        assert "--file-selection" in (tmp_path / "zenity-args.txt").read_text()

        click(app, "Camera", "960 x 540")
        click(app, "Camera", "24 fps")
        click(app, "Camera", "Mirror")
        click(app, "Engine", "Lite")
        click(app, "Start at login")
        wait_for(lambda: app.view.autostart is True, "Start at login on")
        assert menu_item(app, "Start at login").checked
        assert menu_item(app, "Camera", "960 x 540").checked and menu_item(app, "Camera", "24 fps").checked
        assert menu_item(app, "Camera", "Mirror").checked
        assert menu_item(app, "Engine", "OpenVINO device: CPU").checked

        click(app, "Photo", "Open photos folder")
        wait_for(lambda: opened.exists() and str(photos_dir()) in opened.read_text(), "the photos folder opened")
        click(app, "Open log")  # no log yet in this fresh home: says so
        wait_for(lambda: any("no log yet" in n["message"] for n in desktop.notifications()), "the no-log notification")
        wait_for(lambda: app.view.line.startswith("Error: there is no log yet"), "the error in the status line")
        paths.log_dir().mkdir(parents=True)
        (paths.log_dir() / "avatar-cam.log").write_text("started\n")
        click(app, "Open log")
        wait_for(lambda: "avatar-cam.log" in opened.read_text(), "the log opened")
        click(app, "Quit")

    run_tray(app, drive)
    saved = Settings.load()
    assert (saved.width, saved.height, saved.fps, saved.mirror) == (960, 540, 24.0, True)
    assert saved.photo.endswith(mirrored.name) and saved.engine == "lite"
    from avatar_cam.tray import autostart

    assert autostart.is_enabled()
    assert not camera_backend.instances, "nothing here needed the camera"


def preview_window(desktop: Desktop) -> str | None:
    """The X window id of the preview window, or None."""
    found = subprocess.run(["xdotool", "search", "--name", "Avatar Cam preview"], capture_output=True, text=True,
                           env={**os.environ, "DISPLAY": desktop.display}, timeout=30)
    return found.stdout.split()[-1] if found.returncode == 0 and found.stdout.split() else None


def close_window(desktop: Desktop, window: str) -> None:
    """What a window manager does when the user clicks the close button: ask the window to close itself."""
    import Xlib.display
    import Xlib.protocol.event
    import Xlib.X

    d = Xlib.display.Display(desktop.display)
    try:
        w = d.create_resource_object("window", int(window))
        protocols, delete = d.intern_atom("WM_PROTOCOLS"), d.intern_atom("WM_DELETE_WINDOW")
        w.send_event(Xlib.protocol.event.ClientMessage(window=w, client_type=protocols,
                                                       data=(32, [delete, Xlib.X.CurrentTime, 0, 0, 0])))
        d.flush()
    finally:
        d.close()


def test_show_preview_and_avatar_cam_microphone_from_the_menu(desktop, pulse_server, camera_backend, photos, still_idle):
    from helpers import device_names

    from avatar_cam.vmic.pulse import SOURCE

    settings = Settings(camera_backend=camera_recorder.BACKEND, engine="lite", width=320, height=180, fps=15.0,
                        photo=str(photos[0]), camera_on=False, **still_idle)
    controller = Controller(settings)
    app = tray.TrayApp(controller, backend="gtk")

    def camera() -> RecentFramesCamera:
        assert len(camera_backend.instances) == 1, "the camera was reopened"
        return camera_backend.instances[0]

    def drive() -> None:
        wait_for(lambda: app.view.status is not None, "the first status")
        assert menu_item(app, "Show preview").enabled and not menu_item(app, "Show preview").checked
        click(app, "Start camera")
        wait_for(lambda: camera_backend.instances and len(camera().times) > 5, "frames")

        # Show preview: a window with what the camera sends, and the camera stays as it was.
        click(app, "Show preview")
        window = wait_for(lambda: preview_window(desktop), "the preview window")
        wait_for(lambda: is_checked(app, "Show preview"), "Show preview checked")
        frame = camera().since(time.monotonic())[-1:] or wait_for(lambda: camera().since(0)[-1:], "a frame")
        shot = desktop.workdir / "preview.png"
        wait_for(lambda: subprocess.run(["import", "-window", window, str(shot)], timeout=30).returncode == 0
                 and cv2.matchTemplate(cv2.imread(str(shot)), frame[0][1], cv2.TM_CCOEFF_NORMED).max() > 0.95,
                 "the camera's picture in the preview window")
        click(app, "Show preview")
        wait_for(lambda: preview_window(desktop) is None, "the preview window to close")
        wait_for(lambda: not is_checked(app, "Show preview"), "Show preview unchecked")

        # Closing the window by hand turns the preview off, as unchecking it would.
        click(app, "Show preview")
        wait_for(lambda: controller.preview, "the preview on again")
        wait_for(lambda: preview_window(desktop), "the preview window again")

        def closed_by_hand() -> bool:
            window = preview_window(desktop)
            if window:  # clicked again, as a user would, if the first click came before the window listened
                with contextlib.suppress(Exception):  # (it closed between the lookup and the click)
                    close_window(desktop, window)
            return not controller.preview and not is_checked(app, "Show preview")

        wait_for(closed_by_hand, "the preview turned off", step=0.5)
        assert controller.settings.preview is False and controller.status().error is None

        # Avatar Cam Microphone: made and removed with the menu's checkbox, the camera untouched.
        click(app, "Avatar Cam Microphone")
        wait_for(lambda: SOURCE in device_names(pulse_server), "Avatar Cam Microphone among the sources")
        wait_for(lambda: is_checked(app, "Avatar Cam Microphone"), "Avatar Cam Microphone checked")
        assert controller.status().virtual_mic["state"] == "running"
        click(app, "Avatar Cam Microphone")
        wait_for(lambda: SOURCE not in device_names(pulse_server), "Avatar Cam Microphone removed")
        wait_for(lambda: not is_checked(app, "Avatar Cam Microphone"), "Avatar Cam Microphone unchecked")
        click(app, "Avatar Cam Microphone")  # on again: it is what the next start restores
        wait_for(lambda: controller.status().virtual_mic and controller.status().virtual_mic["state"] == "running",
                 "Avatar Cam Microphone on again")
        t = time.monotonic()
        wait_for(lambda: len(camera().since(t)) > 5, "frames after all that")
        click(app, "Quit")

    run_tray(app, drive)
    assert SOURCE not in device_names(pulse_server), "Quit removes Avatar Cam Microphone"
    saved = Settings.load()
    assert saved.virtual_mic is True and saved.preview is False


@pytest.mark.slow
def test_avatar_cam_shows_the_tray_and_ctl_drives_it(desktop, pulse_server, astronaut_png, tmp_path, monkeypatch):
    """`avatar-cam` with no arguments, as a user starts it: the tray appears, follows what `ctl` does,
    answers a second `avatar-cam` with a notification, and `ctl quit` ends it with the camera closed."""
    from avatar_cam.daemon import control_client

    runtime = Path(tempfile.mkdtemp(prefix="ac-", dir="/tmp"))  # a Unix socket path must stay short
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    Settings(camera_backend=camera_recorder.BACKEND, engine="lite", width=640, height=360, fps=15.0,
             photo=str(astronaut_png), camera_on=False).save()
    out = tmp_path / "daemon.out"
    with open(out, "wb") as sink:
        daemon = subprocess.Popen([sys.executable, str(RUN_PRODUCT)], stdin=subprocess.DEVNULL, stdout=sink,
                                  stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: find_icon(desktop.screenshot("daemon-idle"), "stopped") or daemon.poll() is not None,
                 "the daemon's icon", timeout=60)
        assert daemon.poll() is None, out.read_text()
        shown = len(desktop.notifications())
        second = subprocess.run([sys.executable, str(RUN_PRODUCT)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 0 and "already running" in second.stdout, second.stdout + second.stderr
        wait_for(lambda: len(desktop.notifications()) > shown, "the first daemon's notification")
        assert "Avatar Cam is running" in desktop.notifications()[-1]["message"]

        control_client.send("start", timeout=60)
        wait_for(lambda: find_icon(desktop.screenshot("daemon-live"), "live"), "the live icon after `ctl start`")
        wait_for(lambda: control_client.send("status")["status"]["fps"] > 5, "frames in the camera")
        time.sleep(1.5)  # ~20 more frames at 15 fps
        control_client.send("pause")
        wait_for(lambda: find_icon(desktop.screenshot("daemon-paused"), "paused"), "the paused icon after `ctl pause`")
        control_client.send("quit")
        assert daemon.wait(TIMEOUT) == 0, out.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(runtime, ignore_errors=True)
    closed = [line for line in out.read_text().splitlines() if line.startswith("camera closed after")]
    assert closed and int(closed[0].split()[3]) > 10, out.read_text()
    wait_for(lambda: badge_pixels(desktop.screenshot("daemon-gone"), "paused") == 0, "the icon to leave the tray")
