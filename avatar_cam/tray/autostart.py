"""The tray menu's "Start at login" toggle, using the same files the install scripts write.

- Linux: an XDG autostart entry, `$XDG_CONFIG_HOME/autostart/avatar-cam.desktop` (default `~/.config`).
- macOS: a LaunchAgent, `~/Library/LaunchAgents/io.avatar-cam.tray.plist` (RunAtLoad).
- Windows: a shortcut in the user's Startup folder, `Avatar Cam.lnk` (made with PowerShell's WScript.Shell,
  as install-windows.ps1 does), or `Avatar Cam.cmd` if PowerShell cannot make one.

The entry starts the avatar-cam of the installation that is running now: the `avatar-cam` script next to
`sys.executable` (the venv's), else `sys.executable -m avatar_cam`. Turning it off only removes the file: it
never stops a running daemon (on macOS `launchctl bootout` would kill the daemon that launchd started).
"""

from __future__ import annotations

import os
import plistlib
import re
import subprocess
import sys
from pathlib import Path

from avatar_cam.errors import AvatarCamError

DESKTOP_FILE = "avatar-cam.desktop"
LAUNCH_AGENT_LABEL = "io.avatar-cam.tray"
WINDOWS_NAME = "Avatar Cam"


def _system() -> str:
    """The OS family: linux, darwin or win32 (a function, so that tests can pretend to be another OS)."""
    if sys.platform.startswith("win"):
        return "win32"
    return "darwin" if sys.platform == "darwin" else "linux"


# --- what to start ----------------------------------------------------------------------------------------


def command() -> list[str]:
    """The command line that starts the tray of this installation. Not resolved: a venv's python is a symlink."""
    exe = Path(sys.executable).absolute()
    if _system() == "win32":
        pythonw = exe.with_name("pythonw.exe")  # no console window at login
        return [str(pythonw if pythonw.is_file() else exe), "-m", "avatar_cam"]
    script = exe.parent / "avatar-cam"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(exe), "-m", "avatar_cam"]


# --- Linux: XDG autostart ---------------------------------------------------------------------------------

_DESKTOP_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def desktop_exec_quote(arg: str) -> str:
    """Quote one argument for a desktop entry's Exec= (Desktop Entry Specification, "The Exec key").

    Inside double quotes `"`, backquote, `$` and backslash are backslash-escaped; `%` is doubled; then the
    string-value escape doubles every backslash again and writes newlines as \\n. install-linux.sh does exactly
    the same."""
    if arg and not (_DESKTOP_RESERVED & set(arg)):
        quoted = arg
    else:
        quoted = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
    # A newline would end the line: the string-value escapes \n and \r keep the entry on one line.
    return quoted.replace("%", "%%").replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def desktop_entry(argv: list[str]) -> str:
    """The autostart entry's text; install-linux.sh writes the same bytes for the same command."""
    return (
        "[Desktop Entry]\n"
        "# Written by Avatar Cam (install script or the tray's \"Start at login\"); delete it to stop autostart.\n"
        "Type=Application\n"
        "Name=Avatar Cam\n"
        "Comment=Start Avatar Cam in the system tray at login\n"
        f"Exec={' '.join(desktop_exec_quote(a) for a in argv)}\n"
        "Icon=camera-web\n"
        "Terminal=false\n"
        "X-GNOME-Autostart-enabled=true\n"
        "X-GNOME-Autostart-Delay=5\n"
    )


def desktop_exec_split(value: str) -> list[str]:
    """The arguments of an Exec= value: the inverse of joining `desktop_exec_quote`d arguments with spaces."""
    text = re.sub(r"\\(.)", lambda m: {"s": " ", "n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), value)
    args, current, quoted, escaped, started = [], "", False, False, False
    for c in text:
        if escaped:
            current, escaped = current + c, False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted, started = not quoted, True
        elif c == " " and not quoted:
            if current or started:
                args.append(current)
            current, started = "", False
        else:
            current, started = current + c, True
    if current or started:
        args.append(current)
    return [a.replace("%%", "%") for a in args]


def _desktop_values(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, sep, v in (line.partition("=") for line in lines) if sep and not k.startswith("#")}


def _xdg_config_home() -> Path:
    value = os.environ.get("XDG_CONFIG_HOME", "")
    # The spec: a relative or empty value is invalid and is ignored.
    return Path(value) if value and os.path.isabs(value) else Path.home() / ".config"


def _desktop_entry_enabled(path: Path) -> bool:
    values = _desktop_values(path)
    return bool(values) and values.get("Hidden") != "true" and values.get("X-GNOME-Autostart-enabled") != "false"


# --- macOS: LaunchAgent -----------------------------------------------------------------------------------


def launch_agent(argv: list[str]) -> bytes:
    """The LaunchAgent plist; install-macos.sh writes the same keys."""
    return plistlib.dumps({
        "Label": LAUNCH_AGENT_LABEL,
        "ProgramArguments": argv,
        "RunAtLoad": True,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",  # a login to the desktop, not an ssh session
    })


# --- Windows: Startup folder ------------------------------------------------------------------------------


def _startup_dir() -> Path:
    appdata = os.environ.get("APPDATA")
    if not appdata:
        raise AvatarCamError("APPDATA is not set, so the Startup folder cannot be found",
                             hint="start Avatar Cam from a normal Windows session")
    return Path(appdata) / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"


_PS_SHORTCUT = (
    "$s = (New-Object -ComObject WScript.Shell).CreateShortcut($env:AC_LNK); "
    "$s.TargetPath = $env:AC_TARGET; $s.Arguments = $env:AC_ARGS; "
    "$s.WorkingDirectory = $env:USERPROFILE; $s.Description = 'Avatar Cam'; $s.Save()"
)


def _make_shortcut(lnk: Path, argv: list[str]) -> bool:
    """A .lnk through PowerShell (the values travel in environment variables: no quoting to get wrong)."""
    env = {**os.environ, "AC_LNK": str(lnk), "AC_TARGET": argv[0], "AC_ARGS": subprocess.list2cmdline(argv[1:])}
    try:
        done = subprocess.run(["powershell", "-NoProfile", "-NonInteractive", "-Command", _PS_SHORTCUT],
                              env=env, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and lnk.is_file()


def _windows_cmd(argv: list[str]) -> str:
    return f'@start "" {subprocess.list2cmdline(argv)}\r\n'


# --- the toggle -------------------------------------------------------------------------------------------


def entry_path() -> Path:
    """Where the login entry lives on this OS (on Windows the .lnk; a .cmd fallback sits beside it)."""
    system = _system()
    if system == "win32":
        return _startup_dir() / f"{WINDOWS_NAME}.lnk"
    if system == "darwin":
        return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCH_AGENT_LABEL}.plist"
    return _xdg_config_home() / "autostart" / DESKTOP_FILE


def is_enabled() -> bool:
    path = entry_path()
    if _system() == "win32":
        return path.is_file() or path.with_suffix(".cmd").is_file()
    if _system() == "linux":
        return _desktop_entry_enabled(path)
    return path.is_file()


def entry_command() -> list[str] | None:
    """The command the login entry starts, if there is one and it can be read (Linux and macOS, not a .lnk)."""
    path = entry_path()
    if _system() == "linux" and _desktop_entry_enabled(path):
        return desktop_exec_split(_desktop_values(path).get("Exec", "")) or None
    if _system() == "darwin" and path.is_file():
        try:
            return list(plistlib.loads(path.read_bytes()).get("ProgramArguments", [])) or None
        except (OSError, plistlib.InvalidFileException, AttributeError):
            return None
    return None


def set_enabled(on: bool) -> Path:
    """Turn "Start at login" on or off; returns the entry's path. Writing the same thing twice changes nothing."""
    path = entry_path()
    try:
        if on:
            _write(path, command())
        else:
            _remove(path)
    except OSError as exc:
        raise AvatarCamError(f"could not {'create' if on else 'remove'} the login entry {path}: {exc}",
                             hint=f"check that you can write to {path.parent}") from None
    return path


def _write(path: Path, argv: list[str]) -> None:
    system = _system()
    if system == "win32":
        path.parent.mkdir(parents=True, exist_ok=True)
        if _make_shortcut(path, argv):
            path.with_suffix(".cmd").unlink(missing_ok=True)
        else:
            _write_if_changed(path.with_suffix(".cmd"), _windows_cmd(argv).encode())
        return
    data = launch_agent(argv) if system == "darwin" else desktop_entry(argv).encode()
    _write_if_changed(path, data)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    if _system() == "win32":
        path.with_suffix(".cmd").unlink(missing_ok=True)
