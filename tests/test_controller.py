"""The controller's live changes (issues 4 and 5): settings that must not reopen the camera, a microphone
plugged in after start, the preview window where there is no display, and "Avatar Cam Microphone".

Real: the controller, the lite engine, the live pipeline, PortAudio's ALSA `pulse` device and a real
PulseAudio server (tests/pulse.py), `pactl`. Stand-in: the camera device (the recording backend of
tests/camera_recorder.py, named explicitly). The preview window on a real (virtual) screen is tested with
the tray in test_tray.py.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import camera_recorder
import numpy as np
import pytest
from helpers import defaults, device_names, voice_windows, wait_for
from pulse import rescan_portaudio

from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import MicrophoneSource
from avatar_cam.daemon.controller import Controller
from avatar_cam.errors import AudioError, AvatarCamError
from avatar_cam.settings import Settings
from avatar_cam.video.compositor import Compositor, OutputFormat
from avatar_cam.video.portrait import Portrait
from avatar_cam.vmic.pulse import SINK, SOURCE, pulse_env

STILL = {"idle_blinks": False, "idle_head_motion": False, "idle_breathing": False}  # silent frames = the photo


@pytest.fixture()
def cams():
    return camera_recorder.register()


@pytest.fixture()
def controller(astronaut_png):
    made: list[Controller] = []

    def make(**settings) -> Controller:
        base = {"photo": str(astronaut_png), "engine": "lite", "mic": "pulse", "camera_backend": camera_recorder.BACKEND,
                "width": 320, "height": 180, "fps": 15.0, **STILL}
        made.append(Controller(Settings(**{**base, **settings}), persist=False))
        return made[-1]

    yield make
    for ctl in made:
        ctl.stop()


def frames_after(cam, t: float, n: int = 1) -> list[np.ndarray]:
    """The first `n` frames the camera received after monotonic time `t` (waits for them)."""
    def ready():
        later = [i for i, ft in enumerate(cam.times) if ft > t]
        return [cam.frames[i] for i in later[:n]] if len(later) >= n else None

    return wait_for(ready, f"{n} frame(s)")


# ------------------------------------------------------------------------------------------ live settings


def test_mirror_and_fit_apply_between_frames_and_only_size_reopens_the_camera(pulse_server, cams, controller,
                                                                               astronaut_png):
    ctl = controller()
    ctl.start()
    cam = cams.instances[0]
    before = frames_after(cam, time.monotonic())[0]

    t = time.monotonic()
    status = ctl.update_settings(mirror=True)
    assert status.state == "silent" and ctl.settings.mirror
    # The very picture, flipped, in the frames that follow, from the same camera.
    wait_for(lambda: any(np.array_equal(f, before[:, ::-1]) for f in frames_after(cam, t, 3)), "a mirrored frame")
    assert len(cams.instances) == 1 and not cam.closed

    t = time.monotonic()
    ctl.update_settings(fit="pad")  # the whole photo, on a blurred copy of itself: another picture, same camera
    expected = Compositor(Portrait.load(astronaut_png), OutputFormat(320, 180, "pad", mirror=True)).idle_frame
    wait_for(lambda: any(np.array_equal(f, expected) for f in frames_after(cam, t, 3)), "a padded frame")
    ctl.update_settings(idle_blinks=True, virtual_mic_offset_ms=30.0, start_at_login=False)
    assert len(cams.instances) == 1 and not cam.closed

    ctl.update_settings(width=640, height=360)  # the device's size: this one reopens it
    assert len(cams.instances) == 2 and cam.closed
    assert frames_after(cams.instances[1], time.monotonic())[0].shape == (360, 640, 3)


def test_the_status_says_how_fast_the_lips_move_and_the_performance_mode_applies_live(
        pulse_server, cams, controller, speech_wav):
    ctl = controller(performance="light")
    ctl.start()
    player = pulse_server.play(speech_wav)
    status = wait_for(lambda: (s := ctl.status()).mouth_hz and s, "the lips moving in the status")
    # The Lite engine draws every talking frame's mouth, in every mode: lips at the camera's rate.
    assert status.mouth_hz == pytest.approx(15.0, abs=1.5) and status.lips.startswith("lips at 15 Hz")
    assert status.performance == "light" and "lips at" in status.line()
    assert status.to_dict()["mouth_hz"] == status.mouth_hz  # what `ctl status --json` prints
    # how the camera's thread keeps time (root here: directly; a desktop user: through rtkit; else normal)
    assert status.to_dict()["camera_priority"] in ("real-time", "real-time (rtkit)", "high", "normal")
    cam = cams.instances[0]
    ctl.update_settings(performance="smooth")  # no camera reopen
    assert ctl.status().performance == "smooth" and ctl.settings.performance == "smooth"
    assert len(cams.instances) == 1 and not cam.closed
    with pytest.raises(AvatarCamError, match="unknown performance mode"):
        ctl.update_settings(performance="turbo")
    assert ctl.settings.performance == "smooth"
    player.wait(30)


def test_bad_settings_are_refused_before_anything_changes(pulse_server, cams, controller, tmp_path):
    ctl = controller()
    ctl.start()
    saved = Settings(**vars(ctl.settings))
    with pytest.raises(AvatarCamError, match="fit must be 'crop' or 'pad'"):
        ctl.update_settings(fit="stretch", mirror=True)
    with pytest.raises(AvatarCamError, match="unknown lip-sync engine"):
        ctl.update_settings(engine="magic")
    with pytest.raises(AvatarCamError, match="unknown setting"):
        ctl.update_settings(colour="blue")
    (tmp_path / "blank.png").write_bytes((Path(__file__).parent / "camera_recorder.py").read_bytes())
    with pytest.raises(AvatarCamError):
        ctl.update_settings(photo=str(tmp_path / "blank.png"), mirror=True)
    assert ctl.settings == saved and ctl.running and len(cams.instances) == 1


# ------------------------------------------------------------------------------------------ microphones


@pytest.fixture()
def plugged_in_mic(pulse_server, user_dirs):
    """Plug in a microphone: a new PulseAudio source, and the ALSA device that reaches it ("usbmic"), as a
    USB microphone's card would appear. PortAudio lists it only after a rescan."""
    sink = pulse_server.pactl("load-module", "module-null-sink", "sink_name=usb_speaker", "rate=48000", "channels=1")
    source = pulse_server.pactl("load-module", "module-remap-source", "master=usb_speaker.monitor",
                                "source_name=usb_mic", "channels=1")
    assert sink.returncode == 0 and source.returncode == 0, sink.stderr + source.stderr
    pulse_server.pactl("set-default-source", "test_speaker.monitor")  # a new source may take over the default
    keep_alive = subprocess.Popen(["parec", "--latency-msec=10", "-d", "usb_speaker.monitor"],
                                  env=pulse_server.subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    asoundrc = user_dirs / "config" / "alsa" / "asoundrc"  # alsa-lib reads $XDG_CONFIG_HOME/alsa/asoundrc

    def plug() -> None:
        asoundrc.parent.mkdir(parents=True, exist_ok=True)
        asoundrc.write_text('pcm.usbmic {\n type pulse\n device "usb_mic"\n hint { show on description "USB Mic" }\n}\n')

    try:
        pulse_server.wait_until_flowing("usb_mic")
        yield plug
    finally:
        keep_alive.kill()
        keep_alive.wait()
        asoundrc.unlink(missing_ok=True)
        for module in (source, sink):
            pulse_server.pactl("unload-module", module.stdout.strip())
        rescan_portaudio()  # later tests see the usual devices


def speak_into_the_usb_mic(ctl, pulse_server, speech_wav) -> None:
    """Someone speaks into the plugged-in microphone: wait until the camera's audio carries it."""
    ring = ctl._ring
    start = ring.total
    player = pulse_server.play(speech_wav, device="usb_speaker")
    try:
        wait_for(lambda: ring.total > start + 16000 and np.abs(ring.read(start, ring.total - start)).max() > 0.1,
                 "speech from the new microphone")
    finally:
        player.kill()
        player.wait()


def test_a_microphone_plugged_in_after_start_can_be_chosen(plugged_in_mic, pulse_server, cams, controller, speech_wav):
    ctl = controller()
    ctl.start()
    cam, mic_before = cams.instances[0], ctl._mic
    plugged_in_mic()
    # A name nobody lists is refused without disturbing the running microphone.
    with pytest.raises(AudioError, match="No microphone .* matches 'usb-typo'"):
        ctl.set_mic("usb-typo")
    assert ctl._mic is mic_before and ctl._rescans == 0

    status = ctl.set_mic("usbmic")  # not in this process's list yet: found after a rescan
    assert status.mic == "usbmic" and ctl._mic.status == "running" and ctl._rescans == 1
    speak_into_the_usb_mic(ctl, pulse_server, speech_wav)
    assert len(cams.instances) == 1 and not cam.closed
    assert ctl.status().state in ("live", "silent") and ctl.settings.mic == "usbmic"


def test_a_microphone_plugged_in_while_stopped_is_found_at_start(plugged_in_mic, pulse_server, cams, controller):
    ctl = controller(mic="usbmic")
    plugged_in_mic()
    status = ctl.start()
    assert status.mic == "usbmic", status
    assert ctl._mic is not None and ctl._mic.status == "running" and status.error is None


def test_a_chosen_microphone_plugged_in_while_the_camera_runs_is_picked_up(plugged_in_mic, pulse_server, cams,
                                                                           controller, speech_wav):
    """A USB microphone unplugged and plugged in again comes back as a new ALSA card, which PortAudio lists
    only after a rescan: the watchdog looks for it by itself, with no command from the user."""
    ctl = controller(mic="usbmic")
    status = ctl.start()  # not plugged in: the camera runs on the idle face and the status says why
    assert status.state == "error" and "usbmic" in status.error and ctl._mic is None, status
    cam = cams.instances[0]
    frames_after(cam, time.monotonic(), 5)
    plugged_in_mic()
    wait_for(lambda: ctl._mic is not None and ctl._mic.status == "running", "the watchdog to open the new microphone")
    assert ctl._rescans >= 1
    speak_into_the_usb_mic(ctl, pulse_server, speech_wav)
    wait_for(lambda: ctl.status().error is None, "the microphone fault to clear")
    assert len(cams.instances) == 1 and not cam.closed


# ------------------------------------------------------------------------------------------ preview


def test_preview_without_a_display_says_so_and_the_camera_runs_on(pulse_server, cams, controller, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ctl = controller()
    ctl.start()
    with pytest.raises(AvatarCamError, match="cannot open a preview window: no display"):
        ctl.set_preview(True)
    assert not ctl.preview and not ctl.settings.preview and ctl.status().error is None
    ctl.stop()

    # Remembered on (a login session that has no display yet): the camera starts, and the status says why
    # there is no window.
    ctl.settings.preview = True
    status = ctl.start()
    assert status.state == "error" and "cannot open a preview window: no display" in status.error
    t = time.monotonic()
    frames_after(cams.instances[-1], t, 10)
    ctl.set_preview(False)
    assert ctl.status().error is None


def test_preview_on_a_display_that_does_not_answer_fails_in_its_own_process(pulse_server, cams, controller, monkeypatch):
    # A GUI toolkit may abort the process that cannot reach its display (OpenCV's Qt does): the window's own
    # process ends, not ours, and says why.
    monkeypatch.setenv("DISPLAY", ":987")
    ctl = controller()
    ctl.start()
    with pytest.raises(AvatarCamError, match="cannot open a preview window: .*connect to display .*:987"):
        ctl.set_preview(True)
    frames_after(cams.instances[0], time.monotonic(), 5)
    assert ctl.running and not ctl.preview


# ------------------------------------------------------------------------------------------ Avatar Cam Microphone


def test_avatar_cam_microphone_follows_the_setting_and_carries_the_voice(pulse_server, cams, controller, speech_wav):
    before = defaults(pulse_server)
    ctl = controller(virtual_mic=True, virtual_mic_offset_ms=20.0)
    status = ctl.start()
    assert {SINK, SOURCE} <= device_names(pulse_server)
    assert status.virtual_mic["state"] == "running" and status.virtual_mic["device"] == "Avatar Cam Microphone"
    assert status.virtual_mic["offset_ms"] == 20.0
    assert defaults(pulse_server) == before

    # A call app listening to Avatar Cam Microphone hears the speech that reached the test microphone.
    heard = AudioRing(seconds=30)
    listener = MicrophoneSource(heard, device="pulse")
    with pulse_env({"PULSE_SOURCE": SOURCE}):
        listener.start()
    try:
        time.sleep(2.0)  # silence first: the frames' delay is measured, and the voice settles on it
        ring, start, heard_start = ctl._ring, ctl._ring.total, heard.total
        player = pulse_server.play(speech_wav)
        player.wait()
        time.sleep(ctl._vmic.delay_s + 0.5)
    finally:
        listener.stop()
    x, y = ring.read(start, ring.total - start), heard.read(heard_start, heard.total - heard_start)
    voiced = np.flatnonzero(np.abs(x) > 0.05)
    # From the second second of voice on: the first moving mouths retune the delay (see test_virtual_mic.py).
    windows = voice_windows(x, y, start=int(voiced[0]) + 16000)
    assert len(windows) >= 3 and np.median([c for _, _, c in windows]) > 0.9, windows
    lags = [heard.arrival_time(heard_start + j) - ring.arrival_time(start + s) for s, j, _ in windows]
    assert 0.1 < np.median(lags) < 0.6, f"the voice came out {np.median(lags) * 1000:.0f} ms after it went in"

    # The manual offset changes live; turning it off and on again leaves the camera alone.
    ctl.update_settings(virtual_mic_offset_ms=60.0)
    assert ctl.status().virtual_mic["offset_ms"] == 60.0
    ctl.update_settings(virtual_mic=False)
    assert not {SINK, SOURCE} & device_names(pulse_server) and ctl.status().virtual_mic is None
    ctl.update_settings(virtual_mic=True)
    assert SOURCE in device_names(pulse_server)
    assert len(cams.instances) == 1 and not cams.instances[0].closed
    frames_after(cams.instances[0], time.monotonic(), 5)

    ctl.stop()
    assert not {SINK, SOURCE} & device_names(pulse_server)
    assert defaults(pulse_server) == before


def test_a_camera_reopen_leaves_avatar_cam_microphone_in_place(pulse_server, cams, controller):
    """A new frame rate reopens the camera, but a call app listening to Avatar Cam Microphone must not see it
    vanish (it would switch to another microphone): the devices stay while the pipeline restarts."""
    ctl = controller(virtual_mic=True)
    ctl.start()
    assert SOURCE in device_names(pulse_server)
    missing, stop = [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if SOURCE not in device_names(pulse_server):
                missing.append(time.monotonic())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status = ctl.update_settings(fps=25)
        frames_after(cams.instances[-1], time.monotonic(), 5)
    finally:
        stop.set()
        watcher.join()
    assert not missing, "Avatar Cam Microphone disappeared while the camera reopened"
    assert len(cams.instances) == 2 and cams.instances[0].closed and cams.instances[-1].fps == 25
    assert status.virtual_mic["state"] == "running" and ctl._vmic.devices is not None
    ctl.stop()
    assert not {SINK, SOURCE} & device_names(pulse_server)


def test_without_a_sound_server_for_it_the_virtual_microphone_says_why_and_the_camera_runs(
        pulse_server, cams, controller, monkeypatch):
    ctl = controller()
    ctl.start()
    monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent/avatar-cam-test/native")  # pactl finds no server now
    with pytest.raises(AvatarCamError, match="pactl info"):
        ctl.update_settings(virtual_mic=True)
    assert not ctl.settings.virtual_mic and ctl.status().virtual_mic is None
    frames_after(cams.instances[0], time.monotonic(), 5)
    ctl.stop()

    ctl.settings.virtual_mic = True  # on from the last session: the camera starts, the status says why
    monkeypatch.setenv("PULSE_SERVER", pulse_server.env["PULSE_SERVER"])
    with monkeypatch.context() as no_pactl:
        no_pactl.setenv("PATH", "/nonexistent")
        status = ctl.start()
    assert status.state == "error", status
    assert status.error.startswith("Avatar Cam Microphone: the virtual microphone needs `pactl`"), status
    assert status.virtual_mic["state"].startswith("error: the virtual microphone needs `pactl`")
    frames_after(cams.instances[-1], time.monotonic(), 5)
    assert SOURCE not in device_names(pulse_server)
