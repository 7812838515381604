"""The doctor's camera checks: a virtual camera call apps list (v4l2loopback with our label and exclusive_caps on
Linux, OBS's on Windows and macOS), and on Linux one that comes back after a reboot."""

from __future__ import annotations

import contextlib
import os
import plistlib
import shutil
import subprocess
from pathlib import Path

from avatar_cam.doctor import host

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


def check_virtual_camera():
    return {"linux": _camera_linux, "darwin": _camera_macos, "win32": _camera_windows}[host.system()]()


def _camera_linux():
    cards = {}
    for name_file in sorted((SYS / "class" / "video4linux").glob("video*/name")):
        cards[f"/dev/{name_file.parent.name}"] = host.read(name_file).strip()
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
    install = host.linux_install(f"v4l2loopback-dkms v4l2loopback-utils linux-headers-{os.uname().release}",
                             "v4l2loopback  # from RPM Fusion (https://rpmfusion.org/Configuration)")
    return (False, "no virtual camera: the v4l2loopback kernel module is not installed (install_scripts/"
            "install-linux.sh does all of this)", f"{install} && {load}")


def _exclusive_caps() -> bool | None:
    """True/False if every v4l2loopback device agrees on exclusive_caps, None if unknown or mixed."""
    values = host.read(SYS / "module" / "v4l2loopback" / "parameters" / "exclusive_caps").strip().split(",")
    if values == [""]:
        return None
    n = len(list((SYS / "devices" / "virtual" / "video4linux").glob("video*"))) or 1
    flags = {v.strip() in ("Y", "1") for v in values[:n]}
    return flags.pop() if len(flags) == 1 else None


def _module_available(module: str) -> bool:
    modinfo = shutil.which("modinfo", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")  # sbin: not on users' PATH
    if modinfo:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            return host.run(modinfo, "-n", module).returncode == 0
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
        listed = host.run("systemextensionsctl", "list").stdout
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
    conf = any(_has_our_options(host.read(p)) for p in (ETC / "modprobe.d").glob("*.conf"))
    load = any(_listed("v4l2loopback", host.read(p)) for p in (ETC / "modules-load.d").glob("*.conf"))
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
