"""Which pystray backend can show the tray here, and the icons it shows.

Any thread may call these, before the tray runs; `load_backend` imports pystray with the chosen backend.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

from PIL import Image

from avatar_cam import paths

log = logging.getLogger(__name__)

NO_DISPLAY = "no display: the tray cannot show; `avatar-cam run --no-tray` still works"
STATE_ICONS = {"stopped": "idle", "standby": "live", "live": "live", "silent": "live", "paused": "paused", "error": "error"}
# The PNG size handed to each backend (they all rescale to the panel's size themselves): the size the panel
# most often shows, so that the common case needs no rescaling. AppIndicator hosts draw 16 px at 1x and 32 px
# at 2x; a GTK/X11 tray icon sits in a 24-32 px slot; Windows' small icon is 16-32 px; macOS scales to 22 pt.
BACKEND_ICON_SIZE = {"appindicator": 32, "gtk": 24, "xorg": 24, "win32": 32, "darwin": 64}


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
    """The icon for a controller state ("stopped", "standby", "live", "silent", "paused", "error") from tray_assets/."""
    name = STATE_ICONS.get(state, "idle")
    path = paths.tray_assets_dir() / f"avatar-cam-{name}-{size}.png"
    try:
        with Image.open(path) as img:
            return img.convert("RGBA")
    except OSError as exc:  # a broken install must still show something
        log.warning("tray icon %s missing (%s): drawing a plain one", path, exc)
        colour = {"idle": (107, 114, 128), "live": (22, 163, 74), "paused": (217, 119, 6)}.get(name, (220, 38, 38))
        return Image.new("RGBA", (size, size), (*colour, 255))


def drain_gtk_events(budget_s: float = 1.0) -> None:
    """Let GTK finish what the loop left pending (hiding the icon) after the loop ended, so that a stopped
    icon leaves the panel now and not whenever the process exits."""
    from gi.repository import Gdk, GLib

    context, deadline = GLib.MainContext.default(), time.monotonic() + budget_s
    while context.pending() and time.monotonic() < deadline:
        context.iteration(False)
    display = Gdk.Display.get_default()
    if display is not None:
        display.flush()


def set_status_label(icon, backend: str, text: str) -> None:
    """Change only the status line. Rebuilding a GTK menu every second would close it under the user's
    pointer (and make AppIndicator hosts flicker), so the label of the existing item is set in place."""
    handle = getattr(icon, "_menu_handle", None)
    if backend in ("gtk", "appindicator") and handle is not None:
        from gi.repository import GLib

        def set_label() -> bool:
            children = handle.get_children()
            if children:
                children[0].set_label(text)
            return False

        GLib.idle_add(set_label)
    elif getattr(icon, "HAS_MENU", False):
        icon.update_menu()
