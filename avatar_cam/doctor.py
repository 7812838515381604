"""`avatar-cam doctor [--json]`: what this machine is missing for Avatar Cam, and the exact command that fixes it.

Every check runs on its own: one that raises becomes a failed check carrying the message, never a traceback.
Essential checks are the ones without which the live camera cannot run (Python, PortAudio, a microphone, the
virtual camera, OpenVINO on the CPU, writable config/data/cache folders); the exit status is 1 if any of them
fails. The others (tray, models, the virtual microphone, autostart, the camera at boot) print their advice
but do not fail the run: the camera works without them (`run --no-tray`, the Lite engine, ...).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import plistlib
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from avatar_cam import paths
from avatar_cam.thread_priority import can_keep_time

# Roots of the Linux system files the checks read (tests point them at a fake tree).
SYS = Path("/sys")
ETC = Path("/etc")
CARD_LABEL = "Avatar Cam"
V4L2_OPTIONS = f'devices=1 video_nr=10 card_label="{CARD_LABEL}" exclusive_caps=1'
MODPROBE_CONF = "/etc/modprobe.d/avatar-cam.conf"  # what install-linux.sh writes
MODULES_LOAD_CONF = "/etc/modules-load.d/avatar-cam.conf"
OBS_VCAM_CLSID = "{A3FCE0F5-3493-419F-958A-ABA1250EC20B}"  # OBS Virtual Camera's DirectShow filter
UNITY_CAPTURE_CLSID = "{5C2CD55C-92AD-4999-8666-912BD3E70010}"
OBS_MAC_APP = Path("/Applications/OBS.app")
OBS_MAC_EXTENSION = "com.obsproject.obs-studio.mac-camera-extension"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    essential: bool = True


# --- small helpers ----------------------------------------------------------------------------------------


def _system() -> str:
    if sys.platform.startswith("win"):
        return "win32"
    return "darwin" if sys.platform == "darwin" else "linux"


def _run(*cmd: str, timeout: float = 5.0) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def _linux_install(apt: str, dnf: str) -> str:
    """The install command for this distribution's package manager."""
    if shutil.which("dnf") and not shutil.which("apt-get"):
        return f"sudo dnf install -y {dnf}"
    return f"sudo apt-get install -y {apt}"


def _sounddevice():
    import sounddevice  # raises OSError when the PortAudio library is missing

    return sounddevice


def _read(path: Path) -> str:
    """A small system file's text, or "" if it is missing or unreadable (a dangling symlink, say)."""
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")
    return ""


def _devices(kind: str) -> list[str]:
    """Names of the input ("input") or output ("output") devices PortAudio sees."""
    key = f"max_{kind}_channels"
    return [d["name"] for d in _sounddevice().query_devices() if d[key] > 0]


# --- the checks: each returns (ok, detail, fix) -----------------------------------------------------------


def check_python():
    v = sys.version_info
    detail = f"Python {platform.python_version()} ({sys.executable})"
    if v < (3, 10):
        return False, detail + ": Avatar Cam needs 3.10 or newer", "install Python 3.10+ and run the install script again"
    return True, detail, None


def check_portaudio():
    try:
        sd = _sounddevice()
    except OSError as exc:
        fix = {
            "linux": _linux_install("libportaudio2", "portaudio"),
            "darwin": "brew install portaudio",
            "win32": f'"{sys.executable}" -m pip install --force-reinstall sounddevice',
        }[_system()]
        return False, f"the PortAudio library cannot be loaded ({exc})", fix
    return True, sd.get_portaudio_version()[1], None


def check_microphone():
    try:
        names = _devices("input")
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
    }[_system()]
    return False, "no microphone (input device) found", fix


def check_virtual_camera():
    return {"linux": _camera_linux, "darwin": _camera_macos, "win32": _camera_windows}[_system()]()


def _camera_linux():
    cards = {}
    for name_file in sorted((SYS / "class" / "video4linux").glob("video*/name")):
        cards[f"/dev/{name_file.parent.name}"] = _read(name_file).strip()
    ours = [dev for dev, card in cards.items() if card == CARD_LABEL]
    loaded = (SYS / "module" / "v4l2loopback").is_dir()
    load = f"sudo modprobe v4l2loopback {V4L2_OPTIONS}"
    if ours:
        if _exclusive_caps() is False:
            return (False, f'{ours[0]} ("{CARD_LABEL}") has exclusive_caps off: Chrome and WebRTC apps will not list it',
                    f"sudo modprobe -r v4l2loopback && {load}")
        return True, f'{ours[0]} ("{CARD_LABEL}", v4l2loopback)', None
    if loaded:
        others = ", ".join(f'{d} "{c}"' for d, c in cards.items()) or "no devices"
        return (False, f'v4l2loopback is loaded but has no "{CARD_LABEL}" device ({others}); reloading it closes '
                "other loopback cameras (OBS's, for one)", f"sudo modprobe -r v4l2loopback && {load}")
    if _module_available("v4l2loopback"):
        return (False, "v4l2loopback is installed but not loaded (if modprobe says 'Key was rejected by service', "
                "Secure Boot blocks the unsigned module: enroll the DKMS key with `sudo mokutil --import "
                "/var/lib/dkms/mok.pub` and reboot)", load)
    install = _linux_install(f"v4l2loopback-dkms v4l2loopback-utils linux-headers-{os.uname().release}",
                             "v4l2loopback  # from RPM Fusion (https://rpmfusion.org/Configuration)")
    return (False, "no virtual camera: the v4l2loopback kernel module is not installed (install_scripts/"
            "install-linux.sh does all of this)", f"{install} && {load}")


def _exclusive_caps() -> bool | None:
    """True/False if every v4l2loopback device agrees on exclusive_caps, None if unknown or mixed."""
    values = _read(SYS / "module" / "v4l2loopback" / "parameters" / "exclusive_caps").strip().split(",")
    if values == [""]:
        return None
    n = len(list((SYS / "devices" / "virtual" / "video4linux").glob("video*"))) or 1
    flags = {v.strip() in ("Y", "1") for v in values[:n]}
    return flags.pop() if len(flags) == 1 else None


def _module_available(module: str) -> bool:
    modinfo = shutil.which("modinfo", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")  # sbin: not on users' PATH
    if modinfo:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            return _run(modinfo, "-n", module).returncode == 0
    tree = Path("/lib/modules") / os.uname().release
    return tree.is_dir() and any(tree.rglob(f"{module}.ko*"))


def _camera_windows():
    import winreg

    for clsid, name in ((OBS_VCAM_CLSID, "OBS Virtual Camera"), (UNITY_CAPTURE_CLSID, "Unity Capture")):
        try:
            winreg.CloseKey(winreg.OpenKey(winreg.HKEY_CLASSES_ROOT, rf"CLSID\{clsid}"))
        except OSError:
            continue
        return True, f"{name} is registered", None
    return (False, "no virtual camera: install OBS Studio 26 or newer (it registers the OBS Virtual Camera; OBS "
            "itself need not run), or Unity Capture", "winget install --id OBSProject.OBSStudio -e")


def _camera_macos():
    try:
        with open(OBS_MAC_APP / "Contents" / "Info.plist", "rb") as f:
            version = str(plistlib.load(f).get("CFBundleShortVersionString", "0"))
    except OSError:
        return (False, "OBS Studio is not installed: its virtual camera (OBS 30 or newer) is the one Avatar Cam "
                "uses; after installing, open OBS once and click Start Virtual Camera", "brew install --cask obs")
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major < 30:
        return False, f"OBS {version} is too old: Avatar Cam needs OBS 30 or newer's camera extension", "brew upgrade --cask obs"
    try:
        listed = _run("systemextensionsctl", "list").stdout
    except (OSError, subprocess.TimeoutExpired):
        return True, f"OBS {version} is installed (could not ask systemextensionsctl whether its camera is active)", None
    line = next((x for x in listed.splitlines() if OBS_MAC_EXTENSION in x), "")
    if "activated enabled" in line:
        return True, f"OBS {version}, camera extension active", None
    if line:
        return (False, f"OBS {version}'s camera extension is waiting for approval ({line.strip()[-40:]})",
                "approve it in System Settings > General > Login Items & Extensions (or Privacy & Security)")
    return (False, f"OBS {version} is installed but its camera extension is not registered yet: start OBS once "
            "and click Start Virtual Camera", "open -a OBS")


def check_camera_at_boot():
    """Linux only: the module and its options come back after a reboot."""
    conf = any(_has_our_options(_read(p)) for p in (ETC / "modprobe.d").glob("*.conf"))
    load = any(_listed("v4l2loopback", _read(p)) for p in (ETC / "modules-load.d").glob("*.conf"))
    if conf and load:
        return True, "/etc/modprobe.d and /etc/modules-load.d load it with the right options", None
    missing, fixes = [], []
    if not conf:
        missing.append(MODPROBE_CONF)
        fixes.append(f"echo 'options v4l2loopback {V4L2_OPTIONS}' | sudo tee {MODPROBE_CONF}")
    if not load:
        missing.append(MODULES_LOAD_CONF)
        fixes.append(f"echo v4l2loopback | sudo tee {MODULES_LOAD_CONF}")
    return False, f"the camera will not come back after a reboot: missing {', '.join(missing)}", " && ".join(fixes)


def _has_our_options(modprobe_conf: str) -> bool:
    for line in modprobe_conf.splitlines():
        words = line.split("#")[0].split()
        if words[:2] == ["options", "v4l2loopback"]:
            rest = " ".join(words[2:])
            return "exclusive_caps=1" in rest and f'card_label="{CARD_LABEL}"' in rest
    return False


def _listed(module: str, modules_load: str) -> bool:
    return any(line.split("#")[0].strip() == module for line in modules_load.splitlines())


def check_tray():
    """The daemon's own verdict (tray.tray_available, which picks the backend the daemon will use), explained."""
    from avatar_cam.tray import backends as tray

    system = _system()
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
                _linux_install("gir1.2-ayatanaappindicator3-0.1 libayatana-appindicator3-1 gnome-shell-extension-appindicator",
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
    system_libs = _linux_install(
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
    system = _system()
    if system == "linux":
        if not shutil.which("pactl"):
            return False, "pactl is missing, so no virtual microphone can be made", \
                _linux_install("pulseaudio-utils", "pulseaudio-utils")
        info = _run("pactl", "info")
        if info.returncode != 0:
            why = " ".join((info.stderr or info.stdout).split())[:120]
            return (False, f"no PulseAudio/PipeWire server answers ({why})",
                    "systemctl --user start pipewire-pulse.socket  # or, with PulseAudio: pulseaudio --start")
        server = next((x.split(":", 1)[1].strip() for x in info.stdout.splitlines() if x.startswith("Server Name")), "?")
        return True, f"sound server: {server}", None
    try:
        outputs = _devices("output")
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
    fix = _linux_install("rtkit", "rtkit") + "  # then log in again" if _system() == "linux" else None
    return False, "the camera's threads run at normal priority: on a busy machine some frames may leave late", fix


def check_writable(name: str, folder) -> tuple:
    d = Path(folder())
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".doctor-"):
            pass
    except OSError as exc:
        fix = (f'sudo mkdir -p "{d}" && sudo chown -R "$(id -un)" "{d}"' if _system() != "win32"
               else f"give your user write permission on {d} (Properties > Security)")
        return False, f"cannot write to the {name} folder {d}: {exc.strerror or exc}", fix
    return True, str(d), None


def _checks():
    """(name, essential, function) for this OS, in the order they are shown."""
    checks = [
        ("python", True, check_python),
        ("portaudio", True, check_portaudio),
        ("microphone", True, check_microphone),
        ("virtual camera", True, check_virtual_camera),
    ]
    if _system() == "linux":
        checks.append(("virtual camera at boot", False, check_camera_at_boot))
    checks += [
        ("tray", False, check_tray),
        ("openvino", True, check_openvino),
        ("models", False, check_models),
        ("virtual microphone", False, check_virtual_microphone),
        ("start at login", False, check_autostart),
        ("camera priority", False, check_camera_priority),
        ("config dir", True, functools.partial(check_writable, "config", paths.config_dir)),
        ("data dir", True, functools.partial(check_writable, "data", paths.data_dir)),
        ("cache dir", True, functools.partial(check_writable, "cache", paths.cache_dir)),
    ]
    return checks


def run_checks() -> list[Check]:
    results = []
    for name, essential, fn in _checks():
        try:
            ok, detail, fix = fn()
        except Exception as exc:  # isolation: a broken check is one failed line, never a traceback
            ok, detail, fix = False, f"the check itself failed: {type(exc).__name__}: {exc}", None
        results.append(Check(name, bool(ok), detail, fix, essential))
    return results
