"""The checks that run inside the guest, in order, with the real product: no stand-ins.

1. the camera: `avatar-cam doctor` before, install-linux.sh --camera-only, a plain `modprobe v4l2loopback`
   as at boot, the device's name and exclusive_caps, the doctor after;
2. a PulseAudio server (the "sound card"), `avatar-cam daemon --no-tray` with the Lite engine, Avatar Cam
   Microphone on and the camera through pyvirtualcam's v4l2loopback backend;
3. Chromium, headless, as the call app (call_page.html; started first, as it takes longest, and told to open
   the devices once the daemon runs) while the test speaks, switches photo, pauses, resumes, and restarts the
   daemon at another size (there is no `ctl` command for the size: a user edits settings.toml or uses the
   tray, and the tray's size change closes and reopens the camera the same way), with ffmpeg reading the
   device beside Chromium before the restart; after Chromium lets go, a camera off and on gets the new size.

Run as `python in_guest.py RESULTS` with RESULTS/job.json written by the host. Everything it learns goes to
RESULTS/report.json, written after every step so a failure still leaves what came before.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from call_app import Page, serve, start_chromium

RESULTS = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/results")
JOB = json.loads((RESULTS / "job.json").read_text()) if (RESULTS / "job.json").exists() else {}
REPORT: dict = {"steps": {}, "timeline": []}
DAEMONS: list[subprocess.Popen] = []
PAGES: list = []  # the call page's reports (one Page), saved with the report
RUNTIME = Path("/run/user/0")
PA_CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name=test_speaker rate=48000 channels=1
set-default-sink test_speaker
set-default-source test_speaker.monitor
"""


def save() -> None:
    """Write the report, with what the page has reported so far."""
    if PAGES:
        page = PAGES[0]
        with page.lock:
            REPORT["page"] = {"video": list(page.video), "audio": list(page.audio), "events": list(page.events),
                              "last": page.last, "fatal": page.fatal, "snapshots": dict(page.snapshots)}
    (RESULTS / "report.json").write_text(json.dumps(REPORT))


def mark(what: str, **detail) -> None:
    """A moment in the scenario, on the clock the page's samples use (epoch ms)."""
    REPORT["timeline"].append({"t": time.time() * 1000, "what": what, **detail})
    print(f"[{time.monotonic():8.1f}] {what} {detail or ''}", flush=True)


def sh(*cmd: str, timeout: float = 120, env: dict | None = None, keep: int = 6000) -> dict:
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        out = {"rc": done.returncode, "stdout": done.stdout[-keep:], "stderr": done.stderr[-keep:]}
    except subprocess.TimeoutExpired:
        out = {"rc": None, "stdout": "", "stderr": f"timed out after {timeout} s"}
    out["seconds"] = round(time.monotonic() - start, 2)
    return out


def product_env() -> dict:
    home = Path("/root")
    # The state dir (the daemon's debug log) is in the results, so the host keeps it.
    return {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(RUNTIME),
            "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local/share"),
            "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(RESULTS / "state"),
            "PULSE_SERVER": f"unix:{RUNTIME}/pulse/native"}


def avatar_cam(*args: str, timeout: float = 120) -> dict:
    return sh(JOB["python"], "-m", "avatar_cam", *args, timeout=timeout, env=product_env())


def step(name: str):
    """Run fn as a named step: its result, duration or traceback land in the report."""
    def wrap(fn):
        def run(*args, **kwargs):
            start = time.monotonic()
            mark(f"step {name}")
            try:
                result = fn(*args, **kwargs)
                REPORT["steps"][name] = {"ok": True, "seconds": round(time.monotonic() - start, 1), "result": result}
                return result
            except Exception:  # noqa: BLE001  (recorded, and the next steps still run where they can)
                REPORT["steps"][name] = {"ok": False, "seconds": round(time.monotonic() - start, 1),
                                         "error": traceback.format_exc()[-3000:]}
                raise
            finally:
                save()
        return run
    return wrap


# --- 1. the camera ----------------------------------------------------------------------------------------


def camera_check() -> dict:
    out = avatar_cam("doctor", "--json")
    checks = json.loads(out["stdout"])["checks"] if out["stdout"].strip().startswith("{") else []
    found = {c["name"]: c for c in checks}
    return {"camera": found.get("virtual camera"), "at_boot": found.get("virtual camera at boot"),
            "seconds": out["seconds"], "stderr": out["stderr"][-500:]}


def video_devices() -> dict:
    devices = {}
    for name in sorted(Path("/sys/class/video4linux").glob("video*/name")):
        devices[f"/dev/{name.parent.name}"] = name.read_text().strip()
    return devices


def module_parameter(name: str) -> str | None:
    path = Path("/sys/module/v4l2loopback/parameters") / name
    return path.read_text().strip() if path.exists() else None


@step("camera install")
def install_camera() -> dict:
    before = camera_check()
    install = sh("bash", f"{JOB['repo']}/install_scripts/install-linux.sh", "--camera-only", timeout=120,
                 env=product_env())
    after_install = video_devices()
    unload = sh("modprobe", "-r", "v4l2loopback")
    plain = sh("modprobe", "v4l2loopback")  # as at boot: the options come from /etc/modprobe.d
    return {"doctor_before": before, "install": install, "devices_after_install": after_install,
            "unload": unload, "plain_modprobe": plain, "devices": video_devices(),
            "exclusive_caps": module_parameter("exclusive_caps"),
            "modprobe_conf": Path("/etc/modprobe.d/avatar-cam.conf").read_text(),
            "modules_load_conf": Path("/etc/modules-load.d/avatar-cam.conf").read_text(),
            "doctor_after": camera_check()}


# --- 2. sound and the daemon ------------------------------------------------------------------------------


@step("pulseaudio")
def start_pulseaudio() -> dict:
    RUNTIME.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = RUNTIME / "pa.pa"
    config.write_text(PA_CONFIG)
    env = product_env()
    # No real-time scheduling: under emulation its CPU-time limit would get the server killed; but a high
    # priority (nice -11), as a desktop's sound server has (rtkit): at nice 0 beside Chromium (which as root
    # renices itself to -8) its main thread fell up to a minute behind with the microphone's sound. The cheapest
    # resampler, as the emulated guest barely keeps up.
    subprocess.Popen(["pulseaudio", "--resample-method=trivial", "--realtime=no", "--high-priority=yes", "--no-cpu-limit", "--exit-idle-time=-1", "--disallow-exit", "-n", "-F", str(config),
                      f"--log-target=file:{RESULTS}/pulseaudio.log"], env=env, stdin=subprocess.DEVNULL)
    for _ in range(100):
        if sh("pactl", "info", env=env, timeout=5)["rc"] == 0:
            break
        time.sleep(0.2)
    # An idle null sink holds back its monitor; a reader keeps it flowing (see TESTING.md).
    subprocess.Popen(["parec", "--latency-msec=10", "-d", "test_speaker.monitor"], env=env,
                     stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    time.sleep(2)
    return {"info": sh("pactl", "info", env=env)["stdout"][-600:]}


def write_settings(width: int, height: int) -> None:
    folder = Path(product_env()["XDG_CONFIG_HOME"]) / "avatar-cam"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'photo = "{JOB["photos"][0]}"', 'engine = "lite"', "virtual_mic = true", f"width = {width}",
             f"height = {height}", f"fps = {float(JOB['fps'])}", "idle_blinks = false",
             "idle_head_motion = false", "idle_breathing = false"]
    (folder / "settings.toml").write_text("\n".join(lines) + "\n")


def status() -> dict:
    """The daemon's status through its control socket, in this process (what `ctl status --json` prints,
    without starting a Python for each poll: that takes seconds under emulation)."""
    from avatar_cam.daemon import control_client

    try:
        return control_client.send("status", None, timeout=30).get("status") or {}
    except Exception as exc:  # noqa: BLE001  (not up yet, or too busy to answer)
        return {"state": None, "error": f"{type(exc).__name__}: {exc}"}


def ctl(action: str, arg=None, timeout: float = 200) -> dict:
    """What `avatar-cam ctl ACTION [ARG]` sends, sent from this process: a Python started per command spends
    a minute importing under emulation, and that is not what the call app sees. (`ctl quit` below goes
    through the real command line once.)"""
    from avatar_cam.daemon import control_client

    start = time.monotonic()
    try:
        answer = {"ok": True, "state": control_client.send(action, arg, timeout=timeout).get("status", {}).get("state")}
    except Exception as exc:  # noqa: BLE001  (recorded: the checks read it)
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {**answer, "seconds": round(time.monotonic() - start, 2)}


def device_format() -> str | None:
    """The device's sysfs `format` (FOURCC:WxH@fps, the rate readers are told), while it holds frames."""
    device = next((d for d, name in video_devices().items() if name == "Avatar Cam"), "/dev/video10")
    path = Path(f"/sys/class/video4linux/{Path(device).name}/format")
    return path.read_text().strip() if path.exists() else None


def wait_running(limit_s: float) -> dict:
    deadline = time.monotonic() + limit_s
    current: dict = {}
    while time.monotonic() < deadline:
        current = status()
        mark("status", state=current.get("state"), fps=current.get("fps"), error=current.get("error"))
        if current.get("state") in ("live", "silent") and current.get("camera"):
            return current
        time.sleep(1)
    raise RuntimeError(f"the daemon did not reach 'live' or 'silent' in {limit_s} s: {current}")


@step("daemon")
def start_daemon(width: int, height: int, log_name: str, limit_s: float = 300) -> dict:
    write_settings(width, height)
    log = (RESULTS / log_name).open("w")
    started = time.monotonic()
    process = subprocess.Popen([JOB["python"], "-m", "avatar_cam", "daemon", "--no-tray"], env=product_env(),
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    DAEMONS.append(process)
    running = wait_running(limit_s)
    mark("daemon running", width=width, height=height)
    return {"pid": process.pid, "seconds_to_running": round(time.monotonic() - started, 1), "status": running,
            "format": device_format(),
            "devices": video_devices(), "sources": sh("pactl", "list", "short", "sources", env=product_env())["stdout"]}


def play_speech() -> subprocess.Popen:
    mark("speech starts")
    return subprocess.Popen(["paplay", "-d", "test_speaker", JOB["speech"]], env=product_env())


# --- 3. the call app --------------------------------------------------------------------------------------


def wait_for(predicate, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not within {limit_s} s")


@step("chromium starts")
def launch_call(page: Page) -> dict:
    """Chromium takes minutes to start under emulation: it starts first and loads the page, which waits for
    the go (`open_call`) while the camera is installed and the daemon starts."""
    server = serve(page, Path(JOB["web"]), RESULTS, mark)
    browser = start_chromium(server.server_address[1], RESULTS, product_env())
    return {"pid": browser.pid, "port": server.server_address[1]}


@step("chromium opens the devices")
def open_call(page: Page) -> dict:
    started = time.monotonic()
    page.go.set()
    wait_for(lambda: page.fatal is not None or len(page.video) >= 10, 300, "Chromium's first 10 frames")
    if page.fatal:
        raise RuntimeError(f"the page failed: {page.fatal}")
    mark("chromium sees frames")
    return {"seconds_to_frames": round(time.monotonic() - started, 1), "format": device_format()}


def speak_and_wait(seconds_after: float) -> None:
    player = play_speech()
    player.wait(timeout=120)
    mark("speech ends")
    time.sleep(seconds_after)


def snapshot(page: Page, name: str) -> None:
    """Ask the page for a PNG of what it drew (it comes with a later report; `finish_call` waits for it)."""
    with page.lock:
        page.snapshots_wanted.append(name)
    mark("snapshot asked", name=name)


def record_avatar_mic(path: Path) -> subprocess.Popen:
    """Record "Avatar Cam Microphone" with parec beside Chromium: what the product plays, whatever the page hears."""
    return subprocess.Popen(["parec", "-d", "avatar_cam_mic", "--raw", "--format=s16le", "--rate=16000",
                             "--channels=1", str(path)], env=product_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def loudness(path: Path) -> dict:
    import numpy as np

    x = np.frombuffer(path.read_bytes() if path.exists() else b"", np.int16).astype(np.float32) / 32768
    blocks = x[: len(x) // 1600 * 1600].reshape(-1, 1600)  # 100 ms
    rms = np.sqrt((blocks**2).mean(axis=1)) if len(blocks) else np.zeros(0)
    return {"seconds": round(len(x) / 16000, 1), "rms_max": round(float(rms.max(initial=0)), 4),
            "blocks_over_0.01": int((rms > 0.01).sum())}


@step("talking")
def talking(page: Page) -> dict:
    recording = RESULTS / "avatar_mic.s16"
    recorder = record_avatar_mic(recording)
    time.sleep(JOB["silence_s"])
    mark("silence ends")
    speak_and_wait(JOB["silence_s"])
    snapshot(page, "widest_mouth")
    recorder.terminate()
    recorder.wait(timeout=30)
    env = product_env()
    return {"avatar_mic_as_parec_heard_it": loudness(recording), "status": status(),
            "top": sh("sh", "-c", "top -b -n 1 -w 200 | head -30", env=env, keep=4000)["stdout"],
            "sink_inputs": sh("pactl", "list", "sink-inputs", env=env, keep=4000)["stdout"],
            "source_outputs": sh("pactl", "list", "short", "source-outputs", env=env)["stdout"]}


@step("photo switch")
def photo_switch(page: Page) -> dict:
    mark("ctl photo")
    out = ctl("photo", JOB["photos"][1])
    mark("ctl photo answered")
    speak_and_wait(2)
    snapshot(page, "after_photo_switch")
    return {"ctl": out}


@step("pause and resume")
def pause_resume() -> dict:
    mark("ctl pause")
    paused = ctl("pause")
    mark("ctl pause answered")
    speak_and_wait(1)
    mark("ctl resume")
    resumed = ctl("resume")
    mark("ctl resume answered")
    speak_and_wait(2)
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


# --- 4. ffmpeg --------------------------------------------------------------------------------------------


@step("ffmpeg")
def ffmpeg_capture() -> dict:
    device = next((d for d, name in video_devices().items() if name == "Avatar Cam"), "/dev/video10")
    out = sh("ffmpeg", "-hide_banner", "-f", "v4l2", "-i", device, "-t", str(JOB["ffmpeg_s"]), "-vf", "showinfo",
             "-f", "null", "-", timeout=120, keep=10**7)
    frame = sh("ffmpeg", "-hide_banner", "-y", "-f", "v4l2", "-i", device, "-frames:v", "1",
               str(RESULTS / "ffmpeg_frame.png"), timeout=60)
    stream = re.search(r"Stream #0:0: Video: (.*)", out["stderr"])
    times = [float(x) for x in re.findall(r"pts_time:\s*([\d.]+)", out["stderr"])]
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    return {"stream": stream.group(1) if stream else None, "frames": len(times), "measured_fps": rate,
            "format": device_format(),
            "rc": out["rc"], "frame_png_rc": frame["rc"], "stderr_head": out["stderr"][:1500]}


# --- the whole scenario -----------------------------------------------------------------------------------


def main() -> int:
    os.environ.update(product_env())
    REPORT["job"] = JOB
    import avatar_cam as product

    REPORT["product_path"] = product.__file__  # this checkout's (see guest_main.sh), not an installed one
    mark("guest checks start")
    page = Page()
    PAGES.append(page)
    try:
        start_pulseaudio()
        launch_call(page)  # starts while the camera is installed and the daemon starts
        install_camera()
        start_daemon(*JOB["first_size"], "daemon.log")
        open_call(page)
        talking(page)
        photo_switch(page)
        pause_resume()
        ffmpeg_capture()  # a second reader while Chromium watches
        restart_at_size(page)
        finish_call(page)
        size_after_call()
    except Exception:  # noqa: BLE001  (already in the report; save what the page saw)
        traceback.print_exc()
    finally:
        save()
    avatar_cam("ctl", "quit", timeout=200)
    mark("guest checks end")
    save()
    print("phases (s): " + ", ".join(f"{k} {v['seconds']}" for k, v in REPORT["steps"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
