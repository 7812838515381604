"""The daemon in the guest: its settings, `avatar-cam daemon --no-tray` started for real, and what `ctl` sends,
sent over its control socket from this process (a Python started per command spends a minute importing under
emulation, and that is not what the call app sees)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from camera_steps import device_format, video_devices
from guest_io import JOB, RESULTS, autogroup, mark, product_env, sh, step

DAEMONS: list[subprocess.Popen] = []


def write_settings(width: int, height: int) -> None:
    folder = Path(product_env()["XDG_CONFIG_HOME"]) / "avatar-cam"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'photo = "{JOB["photos"][0]}"', 'engine = "lite"', "virtual_mic = true", f"width = {width}",
             f"height = {height}", f"fps = {float(JOB['fps'])}", "idle_blinks = false",
             "idle_head_motion = false", "idle_breathing = false"]
    (folder / "settings.toml").write_text("\n".join(lines) + "\n")


def status() -> dict:
    """The daemon's status through its control socket (what `ctl status --json` prints)."""
    from avatar_cam.daemon import control_client

    try:
        return control_client.send("status", None, timeout=30).get("status") or {}
    except Exception as exc:  # noqa: BLE001  (not up yet, or too busy to answer)
        return {"state": None, "error": f"{type(exc).__name__}: {exc}"}


def ctl(action: str, arg=None, timeout: float = 200) -> dict:
    """What `avatar-cam ctl ACTION [ARG]` sends. (`ctl quit` goes through the real command line once.)"""
    from avatar_cam.daemon import control_client

    start = time.monotonic()
    try:
        answer = {"ok": True, "state": control_client.send(action, arg, timeout=timeout).get("status", {}).get("state")}
    except Exception as exc:  # noqa: BLE001  (recorded: the checks read it)
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {**answer, "seconds": round(time.monotonic() - start, 2)}


def wait_running(limit_s: float) -> dict:
    deadline = time.monotonic() + limit_s
    current: dict = {}
    while time.monotonic() < deadline:
        current = status()
        mark("status", state=current.get("state"), fps=current.get("fps"), error=current.get("error"))
        if current.get("state") in ("standby", "live", "silent") and current.get("camera"):
            return current
        time.sleep(1)
    raise RuntimeError(f"the daemon did not reach 'standby', 'live' or 'silent' in {limit_s} s: {current}")


@step("daemon")
def start_daemon(width: int, height: int, log_name: str, limit_s: float = 300) -> dict:
    write_settings(width, height)
    log = (RESULTS / log_name).open("w")
    started = time.monotonic()
    process = subprocess.Popen([JOB["python"], "-m", "avatar_cam", "daemon", "--no-tray"], env=product_env(),
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)  # its own scheduling group, as an app on a desktop
    DAEMONS.append(process)
    running = wait_running(limit_s)
    mark("daemon running", width=width, height=height)
    return {"pid": process.pid, "autogroup": autogroup(process.pid),
            "seconds_to_running": round(time.monotonic() - started, 1), "status": running, "format": device_format(),
            "devices": video_devices(), "sources": sh("pactl", "list", "short", "sources", env=product_env())["stdout"]}

