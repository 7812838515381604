"""The checks that run inside the guest, in order, with the real product: no stand-ins.

1. the camera (camera_steps.py): `avatar-cam doctor` before, install-linux.sh --camera-only, a plain
   `modprobe v4l2loopback` as at boot, the device's name and exclusive_caps, the doctor after;
2. a PulseAudio server, the "sound card" (sound_steps.py), and `avatar-cam daemon --no-tray` (daemon_steps.py)
   with the Lite engine, Avatar Cam Microphone on and the camera through pyvirtualcam's v4l2loopback backend;
3. Chromium, headless, as the call app (call_app.py, call_page.html; started first, as it takes longest, and
   told to open the devices once the daemon runs) while the test speaks, switches photo, pauses, resumes, and
   restarts the daemon at another size (there is no `ctl` command for the size: a user edits settings.toml or
   uses the tray, and the tray's size change closes and reopens the camera the same way), with ffmpeg reading
   the device beside Chromium before the restart; after Chromium lets go, a camera off and on gets the new size.

Run as `python in_guest.py RESULTS` with RESULTS/job.json written by the host. Everything it learns goes to
RESULTS/report.json, written after every step so a failure still leaves what came before.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from pathlib import Path

import cpu_use
import speed
from call_app import Page, serve, start_chromium
from camera_steps import device_format, ffmpeg_capture, install_camera, video_devices
from daemon_steps import DAEMONS, ctl, start_daemon, status
from guest_io import JOB, PAGES, REPORT, RESULTS, autogroup, avatar_cam, mark, product_env, save, step, wait_for
from sound_steps import sound_state, speak_and_wait, start_pulseaudio


@step("chromium starts")
def launch_call(page: Page) -> dict:
    """Chromium takes minutes to start under emulation: it starts first and loads the page, which waits for
    the go (`open_call`) while the camera is installed and the daemon starts."""
    server = serve(page, Path(JOB["web"]), RESULTS, mark)
    browser = start_chromium(server.server_address[1], RESULTS, product_env())
    return {"pid": browser.pid, "port": server.server_address[1], "autogroup": autogroup(browser.pid)}


@step("chromium opens the devices")
def open_call(page: Page) -> dict:
    started = time.monotonic()
    page.go.set()
    wait_for(lambda: page.fatal is not None or len(page.video) >= 10, 300, "Chromium's first 10 frames")
    if page.fatal:
        raise RuntimeError(f"the page failed: {page.fatal}")
    mark("chromium sees frames")
    return {"seconds_to_frames": round(time.monotonic() - started, 1), "format": device_format()}


def snapshot(page: Page, name: str) -> None:
    """Ask the page for a PNG of what it drew (it comes with a later report; `finish_call` waits for it)."""
    with page.lock:
        page.snapshots_wanted.append(name)
    mark("snapshot asked", name=name)


@step("talking")
def talking(page: Page) -> dict:
    harness = os.getpid()
    before = cpu_use.threads(DAEMONS[-1].pid), cpu_use.processes(), cpu_use.threads(harness)
    time.sleep(JOB["silence_s"])
    mark("silence ends")
    speak_and_wait(JOB["silence_s"], short=False, heard_out=page.heard_out)
    after = cpu_use.threads(DAEMONS[-1].pid), cpu_use.processes(), cpu_use.threads(harness)
    snapshot(page, "widest_mouth")
    return {"status": status(),
            "cpu_while_talking": {"daemon_threads": cpu_use.rates(before[0], after[0], 0),
                                  "processes": cpu_use.rates(before[1], after[1]),
                                  "harness_threads": cpu_use.rates(before[2], after[2], 0)}, **sound_state()}


@step("photo switch")
def photo_switch(page: Page) -> dict:
    mark("ctl photo")
    out = ctl("photo", JOB["photos"][1])
    mark("ctl photo answered")
    speak_and_wait(2, heard_out=page.heard_out)
    snapshot(page, "after_photo_switch")
    return {"ctl": out}


@step("pause and resume")
def pause_resume(page: Page) -> dict:
    mark("ctl pause")
    paused = ctl("pause")
    mark("ctl pause answered")
    speak_and_wait(1, heard_out=page.heard_out)
    mark("ctl resume")
    resumed = ctl("resume")
    mark("ctl resume answered")
    speak_and_wait(2, heard_out=page.heard_out)
    return {"pause": paused, "resume": resumed}


@step("restart at another size")
def restart_at_size(page: Page) -> dict:
    width, height = JOB["second_size"]
    mark("ctl quit")
    quit_ = avatar_cam("ctl", "quit", timeout=200)
    mark("ctl quit answered")
    # `ctl quit` returns once the daemon has ended (and quitting writes no settings): the process is gone.
    started = time.monotonic()
    DAEMONS[-1].wait(timeout=120)
    quit_["process_gone_after_s"] = round(time.monotonic() - started, 2)
    mark("daemon quit")
    devices_between = video_devices()
    try:
        daemon = start_daemon(width, height, "daemon2.log", limit_s=150)
    except RuntimeError as exc:  # what a user would see; the page's view of it is in the report too
        daemon = {"failed": str(exc)}
    speak_and_wait(2)
    return {"quit": quit_, "devices_between": devices_between, "daemon": daemon, "status": status(),
            "page_track": page.last}


@step("chromium finishes")
def finish_call(page: Page) -> dict:
    snapshot(page, "last_frame")
    wait_for(lambda: "last_frame" in page.snapshots or (page.last or {}).get("readyState") == "ended", 180,
             "the page's snapshots")
    page.finish = True
    time.sleep(5)
    return {"last": page.last, "snapshots": page.snapshots}


@step("new size once the call app let go")
def size_after_call() -> dict:
    """Chromium has stopped its tracks: a camera off and on (`ctl stop`, `ctl start`) now gets the size asked for
    (the device held the old one while Chromium read it)."""
    stopped = ctl("stop")
    started = ctl("start")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not device_format():
        time.sleep(0.5)
    return {"stop": stopped, "start": started, "status": status(), "format": device_format()}


def main() -> int:
    os.environ.update(product_env())
    REPORT["job"] = JOB
    import avatar_cam as product

    REPORT["product_path"] = product.__file__  # this checkout's (see guest_main.sh), not an installed one
    mark("guest checks start")
    REPORT["speed_at_boot_s"] = speed.measure()  # read ~0.3 s slower than later: the guest is still settling
    mark("speed at boot", seconds=REPORT["speed_at_boot_s"])
    page = Page()
    PAGES.append(page)
    try:
        start_pulseaudio()
        launch_call(page)  # starts while the camera is installed and the daemon starts
        install_camera()
        REPORT["first_daemon"] = start_daemon(*JOB["first_size"], "daemon.log")  # ("daemon" holds the restart's)
        open_call(page)
        talking(page)
        photo_switch(page)
        pause_resume(page)
        ffmpeg_capture()  # a second reader while Chromium watches
        restart_at_size(page)
        finish_call(page)
        size_after_call()
    except Exception:  # noqa: BLE001  (already in the report; save what the page saw)
        traceback.print_exc()
    finally:
        save()
    avatar_cam("ctl", "quit", timeout=200)
    with contextlib.suppress(Exception):  # the daemon's own exit takes a few seconds under emulation
        DAEMONS[-1].wait(timeout=60)
    REPORT["speed_s"] = speed.measure()  # the daemon gone, Chromium idle: how fast the guest was in the end
    mark("speed", seconds=REPORT["speed_s"])
    mark("guest checks end")
    save()
    print("phases (s): " + ", ".join(f"{k} {v['seconds']}" for k, v in REPORT["steps"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
