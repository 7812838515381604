"""The doctor's other checks: Python, PortAudio and a microphone, the tray, OpenVINO, the models, the virtual
microphone, start at login, the camera's priority, and folders we can write."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from avatar_cam.doctor import host
from avatar_cam.thread_priority import can_keep_time


def check_python():
    v = sys.version_info
    detail = f"Python {platform.python_version()} ({sys.executable})"
    if v < (3, 10):
        return False, detail + ": Avatar Cam needs 3.10 or newer", "install Python 3.10+ and run the install script again"
    return True, detail, None


def check_portaudio():
    try:
        sd = host.sounddevice()
    except OSError as exc:
        fix = {
            "linux": host.linux_install("libportaudio2", "portaudio"),
            "darwin": "brew install portaudio",
            "win32": f'"{sys.executable}" -m pip install --force-reinstall sounddevice',
        }[host.system()]
        return False, f"the PortAudio library cannot be loaded ({exc})", fix
    return True, sd.get_portaudio_version()[1], None


def check_microphone():
    try:
        names = host.devices("input")
    except OSError:
        return False, "no PortAudio, so no microphone can be opened (see portaudio above)", None
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return True, f"{len(names)} input device(s): {shown}", None
    fix = {
        "linux": "pactl list short sources  # plug in a microphone; if no sound server answers: "
                 "systemctl --user start pipewire-pulse.socket (or pulseaudio --start)",
        "darwin": "plug in a microphone and allow the terminal/app in System Settings > Privacy & Security > Microphone",
        "win32": "plug in a microphone and allow desktop apps in Settings > Privacy & security > Microphone",
    }[host.system()]
    return False, "no microphone (input device) found", fix


def check_tray():
    """The daemon's own verdict (tray.tray_available, which picks the backend the daemon will use), explained."""
    from avatar_cam.tray import backends as tray

    system = host.system()
    works, backend = tray.tray_available()
    if not works:
        if backend.startswith(tray.NO_DISPLAY):
            return False, backend, "avatar-cam daemon --no-tray  # or: avatar-cam run --no-tray --photo PHOTO"
        fix = _pygobject_fix() if system == "linux" else f'"{sys.executable}" -m pip install --force-reinstall pystray'
        return False, f"no tray icon: {backend}", fix
    desktop = os.environ.get("XDG_CURRENT_DESKTOP", "")
    if system == "linux" and tray.choose_backends()[0] == "appindicator" and backend != "appindicator":
        return (False, f"this desktop ({desktop or 'Wayland'}) shows tray icons only through AppIndicator, and it "
                f"did not load (the {backend} backend was used instead, which it does not show)",
                host.linux_install("gir1.2-ayatanaappindicator3-0.1 libayatana-appindicator3-1 gnome-shell-extension-appindicator",
                               "libayatana-appindicator-gtk3 gnome-shell-extension-appindicator"))
    if system == "linux" and backend == "xorg":
        if importlib.util.find_spec("gi") is None:
            return (False, "the tray fell back to the plain X11 backend, which has no menu: PyGObject is missing",
                    _pygobject_fix())
        return (False, "the tray fell back to the plain X11 backend, which has no menu: GTK did not start, most "
                "likely for want of a D-Bus session bus (a desktop login provides one)", "dbus-run-session -- avatar-cam")
    return True, f"pystray {backend} backend" + (f" on {desktop}" if desktop else ""), None


def _pygobject_fix() -> str:
    """GTK/AppIndicator introspection, and PyGObject built into this venv (3.51 and newer need GLib 2.80)."""
    system_libs = host.linux_install(
        "gir1.2-gtk-3.0 gir1.2-ayatanaappindicator3-0.1 libgirepository1.0-dev libcairo2-dev pkg-config python3-dev",
        "gtk3 libayatana-appindicator-gtk3 gobject-introspection-devel cairo-gobject-devel pkgconf-pkg-config python3-devel")
    return f'{system_libs} && "{sys.executable}" -m pip install "PyGObject<3.51"'


def check_openvino():
    import openvino

    core = openvino.Core()
    devices = list(core.available_devices)
    names = []
    for d in devices:
        try:
            names.append(f"{d} ({core.get_property(d, 'FULL_DEVICE_NAME')})")
        except Exception:  # a device that cannot describe itself is still listed
            names.append(d)
    version = openvino.__version__.split("-")[0]  # "2026.4.1-22982-e213a14-releases/..." -> "2026.4.1"
    if "CPU" not in devices:
        return False, f"OpenVINO {version} sees no CPU device ({', '.join(names) or 'none'})", \
            f'"{sys.executable}" -m pip install --force-reinstall "openvino>=2024.4"'
    return True, f"OpenVINO {version}: {', '.join(names)}", None


def check_models():
    from avatar_cam.weights import store as model_store

    models = model_store.installed()
    if not models:
        return (False, "no Wav2Lip weights installed: the Lite engine will be used (they are for non-commercial "
                "use only; you are asked to accept that)", "avatar-cam models fetch")
    return True, ", ".join(f"{m.name} ({m.size / 1e6:.0f} MB)" for m in models), None


def check_virtual_microphone():
    system = host.system()
    if system == "linux":
        if not shutil.which("pactl"):
            return False, "pactl is missing, so no virtual microphone can be made", \
                host.linux_install("pulseaudio-utils", "pulseaudio-utils")
        info = host.run("pactl", "info")
        if info.returncode != 0:
            why = " ".join((info.stderr or info.stdout).split())[:120]
            return (False, f"no PulseAudio/PipeWire server answers ({why})",
                    "systemctl --user start pipewire-pulse.socket  # or, with PulseAudio: pulseaudio --start")
        server = next((x.split(":", 1)[1].strip() for x in info.stdout.splitlines() if x.startswith("Server Name")), "?")
        return True, f"sound server: {server}", None
    try:
        outputs = host.devices("output")
    except OSError:
        return False, "no PortAudio, so no virtual cable can be found (see portaudio above)", None
    want, fix = {
        "win32": (("CABLE Input", "VB-Audio"), "install VB-CABLE from https://vb-audio.com/Cable/ and restart Windows"),
        "darwin": (("BlackHole",), "brew install --cask blackhole-2ch"),
    }[system]
    found = [n for n in outputs if any(w.lower() in n.lower() for w in want)]
    if found:
        return True, f"virtual cable: {found[0]}", None
    return False, f"no virtual audio cable ({' / '.join(want)}) among the output devices", fix


def check_autostart():
    from avatar_cam.tray import autostart

    path = autostart.entry_path()
    if not autostart.is_enabled():
        return True, "off (the tray menu's Start at login turns it on)", None
    argv = autostart.entry_command()
    if argv and not Path(argv[0]).is_file():  # e.g. the venv it pointed to was deleted or moved
        return (False, f"on, but {path} starts {argv[0]}, which is not there any more",
                "turn Start at login off and on again in the tray menu (it then starts this installation)")
    return True, f"on ({path})", None


def check_camera_priority():
    if how := can_keep_time():
        return True, f"the camera's threads can run ahead of other programs ({how} priority)", None
    fix = host.linux_install("rtkit", "rtkit") + "  # then log in again" if host.system() == "linux" else None
    return False, "the camera's threads run at normal priority: on a busy machine some frames may leave late", fix


def check_writable(name: str, folder) -> tuple:
    d = Path(folder())
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".doctor-"):
            pass
    except OSError as exc:
        fix = (f'sudo mkdir -p "{d}" && sudo chown -R "$(id -un)" "{d}"' if host.system() != "win32"
               else f"give your user write permission on {d} (Properties > Security)")
        return False, f"cannot write to the {name} folder {d}: {exc.strerror or exc}", fix
    return True, str(d), None
