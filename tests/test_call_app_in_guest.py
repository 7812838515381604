"""Avatar Cam as a call app sees it: a real v4l2loopback device and headless Chromium, in a QEMU guest.

One boot runs everything in order (tests/guest/in_guest.py): the install script's camera step, the daemon
with the Lite engine and Avatar Cam Microphone, Chromium reading both devices while speech plays, a photo
switch, pause and resume, ffmpeg reading the device beside Chromium, and a restart at another size. The
tests below then read what was seen. Part of the default run (`AVATAR_GUEST_TESTS=0` leaves it out); skipped, with
the reason, where QEMU or the Debian kernel pieces cannot be had. The checks that time the voice assert what
emulation allows by default (most phrases, within a second) and the product's promise (every phrase, within a frame)
with AVATAR_GUEST_STRICT=1, for a guest that keeps real time (KVM, a fast host): see STRICT.

Evidence: .guest-cache/evidence/ (report.json: everything the guest measured; checks.json: the summary;
chromium_*.png: frames as Chromium drew them; console.log, guest.log, daemon*.log, chromium.log).
The bounds are loose on purpose: the guest is software-emulated, about ten times slower than the host.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guest"))

import analysis  # noqa: E402
import scenario  # noqa: E402
from kit import GuestKitMissing, build_kit  # noqa: E402
from vm import qemu_available  # noqa: E402

EVIDENCE = scenario.REPO / ".guest-cache" / "evidence"
ENABLE = "AVATAR_GUEST_TESTS"  # 0 turns the guest off for a quick run (tests/run.sh then skips QEMU and Chromium too)
GUEST_TIMEOUT_S = 720  # a limit (runs take 230-340 s), so that a hung guest fails within CI's 25 minutes; checks.json's "steps" say where the time goes
# Voice onset to mouth opening, as Chromium received both: within a frame (the product's promise), give or take the
# page's audio blocks (~85 ms) and where in its frame period a voice starts.
LAG_SLACK_MS = 150
# The emulated guest does not keep real time with the daemon, Chromium and PulseAudio together: its CPU is full, Avatar
# Cam Microphone underflows 400-550 times while the voice plays, and Chromium hears phrases merged or in pieces. Of
# eleven runs on 2026-12-06, five met the product's promise (every phrase heard shows the mouth open; the median voice
# onset to mouth opening within a frame + LAG_SLACK_MS); all eleven met what emulation allows (most phrases open while
# talking and at least one after resume, within a frame + EMULATION_SLACK_MS), which the default run asserts. AVATAR_GUEST_STRICT=1 asserts the promise. The guest's
# speed (tests/guest/speed.py, at boot and at the end) is reported in checks.json: it did not tell the runs apart.
STRICT = os.environ.get("AVATAR_GUEST_STRICT") == "1"
EMULATION_SLACK_MS = 1000


@pytest.fixture(scope="module")
def guest():
    if os.environ.get(ENABLE) == "0":
        pytest.skip(f"{ENABLE}=0: the guest test was turned off for this run")
    try:
        qemu_available()
        build_kit()
    except GuestKitMissing as exc:
        pytest.skip(f"no guest VM here: {exc}")
    shutil.rmtree(EVIDENCE, ignore_errors=True)
    booted, report = scenario.run(EVIDENCE, GUEST_TIMEOUT_S)
    if not report.get("page"):
        pytest.fail(f"the guest reported nothing from the call page; see {EVIDENCE}/guest.log and console.log")
    summary = analysis.summarize(report)
    up = re.search(r"guest: up after ([\d.]+) s", booted.console)
    checks = {"boot": {"returncode": booted.returncode, "seconds": round(booted.seconds, 1),
                       "kernel_to_checks_s": float(up.group(1)) if up else None},
              "steps": {k: {"ok": v["ok"], "seconds": v["seconds"]} for k, v in report.get("steps", {}).items()},
              "speed": speed_today(report), "cpu_while_talking": cpu_while_talking(report), **summary}
    (EVIDENCE / "checks.json").write_text(json.dumps(checks, indent=1))
    print(f"\nguest evidence: {EVIDENCE} (checks.json, report.json, chromium_*.png)")
    print(json.dumps(checks, indent=1))
    return booted, report, summary


def speed_today(report: dict) -> dict:
    """The same small workload on the host and in the guest before anything ran (tests/guest/speed.py)."""
    host, guest = report["job"].get("host_speed_s"), report.get("speed_s")
    return {"host_s": host, "guest_s": guest, "guest_slower_x": round(guest / host, 1) if host and guest else None,
            "guest_at_boot_s": report.get("speed_at_boot_s")}


def cpu_while_talking(report: dict) -> dict | None:
    """The busiest processes and daemon threads while the voice played (% of one vCPU; see tests/guest/cpu_use.py)."""
    talked = report.get("steps", {}).get("talking", {}).get("result", {}).get("cpu_while_talking")
    if not talked:
        return None
    return {"processes": talked["processes"][:10], "daemon_threads": talked["daemon_threads"][:8],
            "harness_threads": talked.get("harness_threads", [])[:6]}


def step(report: dict, name: str) -> dict:
    found = report["steps"].get(name)
    assert found is not None, f"the guest never reached step {name!r}"
    assert found["ok"], found.get("error")
    return found["result"]


def mouth_opened_with(phrases: list[dict], at_least: int) -> None:
    """Every phrase heard shows the mouth open (STRICT), or `at_least` of them do (what emulation allows)."""
    assert phrases and all(p["frames"] >= 2 for p in phrases), phrases
    opened = [p["widest"] > analysis.MOUTH_OPEN for p in phrases]
    assert all(opened) if STRICT else sum(opened) >= at_least, phrases


def needs_sound(test):
    """A check that needs the guest's sound. If the sound server died during the run (PulseAudio 16.1 aborts now
    and then on an assertion of its own; the guest starts it again, as a desktop does: tests/guest/sound_steps.py),
    a failure of the check is reported as a skip that says so, with the failure."""

    @functools.wraps(test)
    def check(guest):
        try:
            test(guest)
        except (AssertionError, pytest.fail.Exception) as exc:
            deaths = guest[1].get("sound_server_deaths")
            if not deaths:
                raise
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            pytest.skip(f"the guest's PulseAudio died {len(deaths)} time(s) during the run (exit status "
                        f"{deaths[0]['exit_status']}; its log: {' | '.join(deaths[0]['log'])[:300]}): this sound "
                        f"check cannot be judged. It failed with: {first}")

    return check


def test_the_guest_boots_runs_the_checks_and_powers_off(guest):
    booted, report, _ = guest
    assert not booted.timed_out, booted.console[-2000:]
    assert booted.returncode == 0
    assert (EVIDENCE / "exit_code").read_text().strip() == "0", (EVIDENCE / "guest.log").read_text()[-3000:]
    assert report["product_path"].startswith(str(scenario.REPO)), report["product_path"]  # not another checkout


def test_install_script_makes_the_camera_that_loads_at_boot(guest):
    _, report, _ = guest
    camera = step(report, "camera install")
    before = camera["doctor_before"]["camera"]
    assert not before["ok"] and "modprobe v4l2loopback" in before["fix"] and "exclusive_caps=1" in before["fix"]
    assert camera["install"]["rc"] == 0, camera["install"]
    assert camera["plain_modprobe"]["rc"] == 0
    assert "Avatar Cam" in camera["devices"].values()
    assert camera["exclusive_caps"].split(",")[0] in ("Y", "1")
    assert camera["doctor_after"]["camera"]["ok"], camera["doctor_after"]
    assert camera["doctor_after"]["at_boot"]["ok"], camera["doctor_after"]


def test_chromium_lists_and_opens_avatar_cam_and_its_microphone(guest):
    _, report, summary = guest
    step(report, "chromium opens the devices")
    listed = summary["devices"]["listed"]
    assert ("videoinput", "Avatar Cam") in listed
    assert ("audioinput", "Avatar Cam Microphone") in listed
    assert {t["label"] for t in summary["devices"]["tracks"]} == {"Avatar Cam", "Avatar Cam Microphone"}


def test_chromium_is_told_the_camera_s_frame_rate(guest):
    _, _, summary = guest
    video = next(t for t in summary["devices"]["tracks"] if t["kind"] == "video")
    assert video["settings"]["frameRate"] == pytest.approx(scenario.FPS), video  # was 30 whatever the rate


@needs_sound
def test_chromium_hears_the_voice_from_avatar_cam_microphone(guest):
    # The speech is ~6 s of voice in three phrases; in pieces or not, the call app hears it.
    _, report, summary = guest
    step(report, "talking")
    talk = summary["talking"]
    assert talk["loudest_rms"] > 0.01 and talk["voiced_s"] >= 2.0, talk


def test_the_portrait_arrives_not_a_black_or_grey_frame(guest):
    _, _, summary = guest
    seen = summary["portrait"]["before_switch"]
    assert seen is not None and seen["frames"] >= 20
    assert seen["sizes"] == [f"{w}x{h}" for w, h in [scenario.FIRST_SIZE]]
    assert seen["frame_std_median"] > 20  # a photo, not a flat frame
    assert seen["outside_mouth_diff_median"] < analysis.OUTSIDE_SAME
    assert seen["outside_mouth_diff_vs_other_photo"] > 2 * seen["outside_mouth_diff_median"]


def spoken(seen: dict) -> list[dict]:
    """The phrases heard (at least 0.4 s of voice: a phrase, not a click), each with the frames seen around it."""
    return [p for p in seen["phrases"] if p["ms"] >= 400]


@needs_sound
def test_the_mouth_rests_in_silence(guest):
    _, _, summary = guest
    talk = summary["talking"]
    assert talk["frames_in_silence"] >= 10 and talk["mouth_moved_in_silence"] < 0.15, talk


@needs_sound
def test_the_mouth_opens_with_the_phrases_heard(guest):
    _, _, summary = guest
    phrases = spoken(summary["talking"])
    mouth_opened_with(phrases, at_least=len(phrases) // 2 + 1)  # most of them


@needs_sound
def test_the_mouth_follows_the_voice_as_chromium_receives_them(guest):
    _, _, summary = guest
    talk = summary["talking"]
    print(f"voice onset -> mouth opening, as Chromium received them: {talk['onset_to_mouth_ms']} ms")
    assert len(talk["onset_to_mouth_ms"]) >= (2 if STRICT else 1), talk
    slack = LAG_SLACK_MS if STRICT else EMULATION_SLACK_MS
    assert abs(talk["median_onset_to_mouth_ms"]) < talk["frame_period_ms"] + slack, talk


@needs_sound
def test_a_photo_switch_changes_the_face_and_the_track_stays_live(guest):
    _, report, summary = guest
    step(report, "photo switch")
    after = summary["portrait"]["after_switch"]
    assert after is not None and after["frames"] >= 10
    assert after["outside_mouth_diff_median"] < analysis.OUTSIDE_SAME, after
    assert after["outside_mouth_diff_vs_other_photo"] > 2 * after["outside_mouth_diff_median"], after
    assert summary["ended_before_restart"] == [], summary["track_events"]


@needs_sound
def test_pause_holds_the_mouth_still_while_the_voice_speaks(guest):
    _, report, summary = guest
    step(report, "pause and resume")
    paused = spoken(summary["pause"]["paused"])
    assert paused and all(p["frames"] >= 2 for p in paused), summary["pause"]
    assert all(p["widest"] <= analysis.MOUTH_OPEN for p in paused), summary["pause"]


@needs_sound
def test_resume_brings_the_mouth_back(guest):
    _, report, summary = guest
    step(report, "pause and resume")
    # After three steps of speech Chromium's own audio may trail by 10-20 s under emulation (run 8, BENCHMARKS.md):
    # what it hears after resume mixes in silence the frames show as such. One phrase with the mouth moving again
    # (and none while paused) is what emulation allows.
    mouth_opened_with(spoken(summary["pause"]["resumed"]), at_least=1)


def test_ffmpeg_reads_the_device(guest):
    _, report, _ = guest
    seen = step(report, "ffmpeg")
    print(f"ffmpeg: {seen['stream']}; {seen['frames']} frames at {seen['measured_fps']} fps")
    assert seen["stream"] and "yuv420p" in seen["stream"]
    w, h = scenario.FIRST_SIZE
    assert f"{w}x{h}" in seen["stream"]
    assert f" {scenario.FPS} fps" in seen["stream"], seen["stream"]  # the rate the device announces
    assert seen["frames"] >= 5
    assert (EVIDENCE / "ffmpeg_frame.png").exists()


@needs_sound
def test_a_restart_at_another_size_while_the_call_app_watches_finds_the_camera_again(guest):
    # The restarted daemon used to find no camera at all ('No v4l2 loopback device': v4l2loopback 0.12 had
    # hidden the device's output side when the first daemon's writer closed). Now it finds it, at the size
    # Chromium still holds (sending that size, its status saying why the new size waits) or, if Chromium
    # ended its track meanwhile (it gives up on a camera after ~10 s without frames, and under emulation a
    # quit and a start take longer than that; a few seconds on a real machine), at the new size.
    _, report, summary = guest
    restart = step(report, "restart at another size")
    seen = summary["restart_at_new_size"]
    print(f"restart at another size: {json.dumps(seen)[:1500]}")
    # The CLI's quit returns once the daemon let go of its lock, its last act; the interpreter's own exit
    # (OpenVINO, OpenCV) takes a few seconds more under emulation.
    assert restart["quit"]["rc"] == 0 and restart["quit"]["process_gone_after_s"] < 30, restart["quit"]
    assert "failed" not in restart["daemon"], restart["daemon"]
    status = restart["daemon"]["status"]
    assert status["camera"] and "No v4l2 loopback" not in str(status), status
    ended = [e for e in seen["events_after_quit"] if e["what"] == "ended"]
    (w, h), (w2, h2) = scenario.FIRST_SIZE, scenario.SECOND_SIZE
    if ended:
        assert f":{w2}x{h2}@" in (restart["daemon"]["format"] or ""), restart["daemon"]
    else:
        assert seen["frames_after_restart"] >= 5 and seen["sizes_after_quit"] == [f"{w}x{h}"], seen
        notice = status.get("notice") or ""
        assert "in use by another program" in notice and f"{w}x{h}" in notice, status


@needs_sound
def test_the_camera_rests_until_the_call_app_opens_it_and_a_restart_finds_the_app_reading(guest):
    # The daemon started before Chromium opened the camera: it rested (a frame a second, no lips) until the open,
    # seen through inotify on the real v4l2loopback node. The restarted daemon found Chromium already reading
    # (its first count, from /proc), unless Chromium had ended its track meanwhile.
    _, report, summary = guest
    assert report["first_daemon"]["status"]["state"] == "standby", report["first_daemon"]["status"]
    assert step(report, "talking")["status"]["state"] in ("live", "silent"), step(report, "talking")["status"]
    restarted = step(report, "restart at another size")["daemon"]["status"]
    if not [e for e in summary["restart_at_new_size"]["events_after_quit"] if e["what"] == "ended"]:
        assert restarted["state"] in ("live", "silent"), restarted


def test_the_new_size_applies_once_the_call_app_let_go(guest):
    _, report, _ = guest
    after = step(report, "new size once the call app let go")
    w, h = scenario.SECOND_SIZE
    assert after["start"]["ok"], after["start"]
    assert after["format"] and f":{w}x{h}@{scenario.FPS}" in after["format"], after
    assert not after["status"].get("notice"), after["status"]
