"""The tray menu: what it shows (`MenuView`, a snapshot the watch thread replaces whole) and its items.

pystray calls the menu's text/checked callables on the tray's loop thread: they read only the view and plain
settings values, never the controller, whose lock is held for seconds while a camera starts. Actions hand
their work to the app's command thread (`TrayApp.do`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avatar_cam.daemon.status import Status
from avatar_cam.lipsync.registry import REGISTRY
from avatar_cam.live.performance import MODES

RESOLUTIONS = ((1280, 720), (960, 540), (640, 360), (1920, 1080))
FRAME_RATES = (15, 24, 25, 30)


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


def build_menu(app):
    """The menu of `app` (a TrayApp)."""
    from pystray import Menu
    from pystray import MenuItem as Item

    s = app.controller.settings  # read-only here: plain attribute reads, no lock
    view = lambda: app.view  # noqa: E731 - always the newest snapshot

    def act(fn, *args, **kwargs):
        """A menu action running `fn(*args, **kwargs)` on the command thread (pystray calls it with icon, item)."""
        return lambda _icon, _item: app.do(fn, *args, **kwargs)

    def photo_items():
        current = file_key(s.photo)
        for path in view().photos:
            yield Item(path.name, act(app.controller.set_photo, path, busy="Switching photo..."),
                       checked=lambda _it, p=path: file_key(p) == current, radio=True)
        if s.photo and current not in {file_key(p) for p in view().photos}:
            yield Item(f"{Path(s.photo).name} (not in the folder)", None, checked=lambda _it: True, radio=True)
        yield Menu.SEPARATOR
        yield Item("Add photo...", lambda: app.add_photo())
        yield Item("Open photos folder", lambda: app.open_photos_folder())

    def mic_items():
        yield Item("System default", lambda: app.do(app.controller.set_mic, None),
                   checked=lambda _it: s.mic is None, radio=True)
        names = view().mics
        for name in names:
            yield Item(name, act(app.controller.set_mic, name),
                       checked=lambda _it, n=name: s.mic == n, radio=True)
        if s.mic is not None and s.mic not in names:
            yield Item(f"{s.mic} (not found)", None, checked=lambda _it: True, radio=True, enabled=False)

    def camera_items():
        sizes = list(RESOLUTIONS) if (s.width, s.height) in RESOLUTIONS else [(s.width, s.height), *RESOLUTIONS]
        for w, h in sizes:
            yield Item(f"{w} x {h}", act(app.controller.update_settings, width=w, height=h),
                       checked=lambda _it, w=w, h=h: (s.width, s.height) == (w, h), radio=True)
        yield Menu.SEPARATOR
        rates = list(FRAME_RATES) if float(s.fps) in FRAME_RATES else [s.fps, *FRAME_RATES]
        for fps in rates:
            yield Item(f"{fps:g} fps", act(app.controller.update_settings, fps=float(fps)),
                       checked=lambda _it, f=fps: float(s.fps) == float(f), radio=True)
        yield Menu.SEPARATOR
        yield Item("Mirror", lambda: app.toggle_mirror(), checked=lambda _it: bool(s.mirror))
        yield Menu.SEPARATOR
        yield Item("Performance", Menu(performance_items))

    def performance_items():
        for mode in MODES.values():
            yield Item(mode.label, act(app.controller.update_settings, performance=mode.name, busy=f"{mode.label}..."),
                       checked=lambda _it, m=mode.name: s.performance == m, radio=True)

    def engine_items():
        for key, label in ((spec.name, spec.label) for spec in REGISTRY.values()):
            yield Item(label, act(app.controller.set_engine, key, busy=f"Loading {label}..."),
                       checked=lambda _it, k=key: s.engine == k, radio=True)
        yield Menu.SEPARATOR
        devices = view().ov_devices if s.device in view().ov_devices else (*view().ov_devices, s.device)
        for dev in devices:
            yield Item(f"OpenVINO device: {dev}", act(app.controller.update_settings, device=dev),
                       checked=lambda _it, d=dev: s.device == d, radio=True)

    def items():
        yield Item(lambda _it: app.view.line, None, enabled=False)
        yield Item(lambda _it: "Stop camera" if app.controller.running else "Start camera", lambda: app.toggle_camera())
        yield Item(lambda _it: "Resume" if app.view.status and app.view.status.state == "paused" else "Pause",
                   lambda: app.toggle_pause(), enabled=lambda _it: app.controller.running)
        yield Menu.SEPARATOR
        yield Item("Photo", Menu(photo_items))
        yield Item("Microphone", Menu(mic_items))
        yield Item("Camera", Menu(camera_items))
        yield Item("Engine", Menu(engine_items))
        yield Menu.SEPARATOR
        yield Item("Show preview", lambda: app.toggle_preview(), checked=lambda _it: bool(app.view.preview),
                   enabled=lambda _it: app.view.preview is not None)
        yield Item("Avatar Cam Microphone", lambda: app.toggle_virtual_mic(), checked=lambda _it: bool(s.virtual_mic))
        yield Item("Start at login", lambda: app.toggle_autostart(), checked=lambda _it: bool(app.view.autostart),
                   enabled=lambda _it: app.view.autostart is not None)
        yield Item("Open log", lambda: app.open_log())
        yield Menu.SEPARATOR
        yield Item("Quit", lambda: app.quit())

    return Menu(lambda: tuple(items()))



def file_key(path) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).expanduser().resolve())
    except OSError:
        return str(path)


def shorten(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
