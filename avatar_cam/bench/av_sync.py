"""`avatar-cam bench av-sync`: voice vs lips as a call app gets them, Avatar Cam Microphone against the camera.

It plays speech into a test sink that the microphone hears, records Avatar Cam Microphone, notes when each
camera frame left, and reports the offsets (see sync_analysis.py). Needs a PulseAudio or PipeWire server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyvirtualcam

from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import MicrophoneSource
from avatar_cam.bench.cameras import TIMED_BACKEND, TimedCamera
from avatar_cam.bench.common import ProcessCpu, answer, bench_renderer, bench_speech, picture_options
from avatar_cam.bench.sync_analysis import steady_clock, sync_report
from avatar_cam.errors import AvatarCamError, VirtualMicError
from avatar_cam.lipsync.registry import ENGINES
from avatar_cam.live.performance import DEFAULT, MODES
from avatar_cam.live.performance import performance as performance_mode
from avatar_cam.live.pipeline import LivePipeline
from avatar_cam.outputs.camera import VirtualCameraSink
from avatar_cam.vmic.microphone import VirtualMicrophone
from avatar_cam.vmic.pulse import SOURCE, pactl, process_token, pulse_env


def register(kinds) -> None:
    """Add `avatar-cam bench av-sync` to bench.py's KIND subparsers."""
    p = kinds.add_parser("av-sync", parents=[picture_options()],
                         help="voice vs lips as a call app gets them: Avatar Cam Microphone against the camera")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to speak (default 30; drift needs minutes)")
    p.add_argument("--offset-ms", type=float, default=0.0, help="manual offset on top of the measured delay")
    p.add_argument("--performance", choices=tuple(MODES), default=DEFAULT,
                   help=f"performance mode (default {DEFAULT}): its mouth rate bounds how closely the lips can follow")
    p.add_argument("--engine", choices=ENGINES, default="wav2lip",
                   help="lip-sync engine (default wav2lip; lite draws a mouth for every frame on any machine)")
    p.set_defaults(func=run)


def run(args) -> int:
    r = av_sync_bench(args.seconds, args.photo, args.audio, args.checkpoint, args.size, args.fps, args.offset_ms,
                      args.performance, args.engine)
    return answer(args, r, _print_av_sync)


def _print_av_sync(r: dict) -> None:
    lo, hi = r["offset_ms_p5_p95_signed"]
    print(f"voice vs lips over {r['span_s']} s of speech, {r['frames']} talking frames ({r['weights']})")
    print(f"  |offset| p50 {r['offset_ms_p50']} ms, p95 {r['offset_ms_p95']} ms  (signed p5..p95 {lo:+}..{hi:+} ms, "
          f"mean {r['offset_ms_mean']:+} ms; > 0: the voice comes later)")
    print(f"  frames that showed their own mouth: {r['own_mouth_frames']} of {r['frames']}, |offset| p50 "
          f"{r['own_mouth_offset_ms_p50']} ms (the pacing alone; the others show an older mouth: a busy machine)")
    print(f"  drift {r['drift_ms_per_hour']:+} ms/hour (+- {r['drift_ms_per_hour_stderr']}; longer runs narrow it)")
    print(f"  voice delayed {r['voice_delay_ms_p50']} ms (target {r['delay_ms']} ms); frames ready p5/p50/p95 "
          f"{r['frame_ready_ms_p5_p50_p95']} ms and sent p5/p50/p95 {r['frame_latency_ms_p5_p50_p95']} ms after "
          f"the sound was heard; voice similarity p5 {r['voice_similarity_p5']}")
    print(f"  playout: {r['jumps']} jumps, {r['holds']} holds, {r['underruns']} underruns, {r['breakups']} breakups "
          f"(the output thread late), clock drift {r['clock_drift_ppm']} ppm; CPU {r['cpu_pct']}% of one core "
          f"while speaking")


def _watchdog(vmic: VirtualMicrophone, stop: threading.Event) -> None:
    """What the daemon's watchdog does for Avatar Cam Microphone (daemon/extras.py): a look every 0.25 s."""
    while not stop.wait(0.25):
        vmic.check()


def _need_sound_server() -> None:
    try:
        pactl("info")
    except VirtualMicError as e:
        raise AvatarCamError(
            f"bench av-sync needs a PulseAudio or PipeWire sound server (it plays speech into a test sink, hears it "
            f"as the microphone and records Avatar Cam Microphone): {str(e).splitlines()[0]}",
            hint="run it in your desktop session; on a headless machine: apt install pulseaudio pulseaudio-utils "
                 "libasound2-plugins && pulseaudio --daemonize=yes --exit-idle-time=-1") from None


def _wait_until_flowing(ring: AudioRing, timeout: float = 10.0) -> None:
    """Until the ring has grown steadily for half a second."""
    deadline, since, last = time.monotonic() + timeout, None, ring.total
    while time.monotonic() < deadline:
        time.sleep(0.05)
        grew, last = ring.total > last, ring.total
        since = (since or time.monotonic()) if grew else None
        if since is not None and time.monotonic() - since > 0.5:
            return
    raise AvatarCamError(f"no audio arrived within {timeout:.0f} s", hint="is the sound server running? `pactl info`")


def _wait_until_settled(pipeline, timeout: float = 20.0) -> None:
    """Until frames have come for 3 s and their lateness holds still (within 3 ms over a second).

    A sound server may hand a new stream's first seconds over late and then catch up (PulseAudio does, for a
    null sink's monitor); measuring sync while the delay still follows that would measure the catching up.
    """
    start, previous = time.monotonic(), None
    while time.monotonic() - start < timeout:
        time.sleep(1.0)
        recent = [r.lateness for r in pipeline.stats.records[-30:] if r.index >= 0 and r.lateness is not None]
        now = float(np.median(recent)) if len(recent) >= 10 else None
        if now is not None and previous is not None and abs(now - previous) < 0.003 and time.monotonic() - start >= 3:
            return
        previous = now


def av_sync_bench(seconds: float = 30.0, photo: Path | None = None, audio: Path | None = None,
                  checkpoint: Path | None = None, size: str = "1280x720", fps: float = 30.0,
                  offset_ms: float = 0.0, performance: str = DEFAULT, engine: str = "wav2lip") -> dict:
    _need_sound_server()
    pyvirtualcam.register_backend(TIMED_BACKEND, TimedCamera)
    speaker = "avatar_cam_bench_speaker"
    with tempfile.TemporaryDirectory(prefix="avatar-cam-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        renderer, clock, weights_note = bench_renderer(work, engine, photo, checkpoint, size, fps, performance)
        w, h = renderer.compositor.fmt.width, renderer.compositor.fmt.height
        speech = bench_speech(audio, work, seconds)

        module = pactl("load-module", "module-null-sink", f"sink_name={speaker}", "rate=48000", "channels=1",
                       f"sink_properties='device.description=\"Avatar Cam bench speaker\" "
                       f"avatar_cam.bench={process_token(os.getpid())}'").strip()
        stack.callback(pactl, "unload-module", module, check=False)
        ring, recorded = AudioRing(seconds + 20), AudioRing(seconds + 20)
        mic, listener = MicrophoneSource(ring, device="pulse"), MicrophoneSource(recorded, device="pulse")
        camera = VirtualCameraSink(w, h, fps, backend=TIMED_BACKEND)
        stack.callback(camera.close)
        vmic = stack.enter_context(VirtualMicrophone(ring, offset_ms, initial_delay_s=clock.lookahead_s + 0.04))
        watching = threading.Event()
        threading.Thread(target=_watchdog, args=(vmic, watching), name="vmic-watchdog", daemon=True).start()
        stack.callback(watching.set)
        # Every frame (stats.records is bounded): index, audio time its lips show, talking, latency, lateness, and
        # whether the mouth is its own.
        shown: list[tuple[int, float, bool, float | None, float | None, bool]] = []

        def on_frame(frame, rec) -> None:
            vmic.observe_frame(frame, rec)
            # The audio time the lips show: the mouth's own (an earlier frame's when the machine is busy).
            mouth_time = clock.audio_time(rec.mouth_index) if rec.mouth_index >= 0 else rec.audio_time
            shown.append((rec.index, mouth_time, rec.inferred, rec.latency, rec.lateness, rec.mouth_index == rec.index))

        pipeline = LivePipeline(renderer, [camera], ring, clock, on_frame=on_frame,
                                performance=performance_mode(performance))
        pipeline.pace = vmic.frame_due
        with pulse_env({"PULSE_SOURCE": f"{speaker}.monitor"}):
            mic.start()
        stack.callback(mic.stop)
        with pulse_env({"PULSE_SOURCE": SOURCE}):
            listener.start()
        stack.callback(listener.stop)
        _wait_until_flowing(ring)  # a new null sink's monitor may hold audio back for a second or two
        _wait_until_flowing(recorded)
        frames = threading.Thread(target=pipeline.run, name="frames", daemon=True)
        frames.start()
        stack.callback(frames.join, 10)
        stack.callback(pipeline.stop)
        _wait_until_settled(pipeline)  # silence first: the input's latency settles and the delay is measured
        player = subprocess.Popen(["paplay", "-d", speaker, str(speech)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(player.kill)
        cpu = ProcessCpu()  # (the bench's own recorder included: a call app's share is not ours to count)
        time.sleep(seconds)
        cpu_pct = cpu.percent()
        player.kill()
        time.sleep(vmic.delay_s + 0.5)  # the last voice leaves the virtual microphone
        status = vmic.status()
        pipeline.stop()
        frames.join(10)
        mic.stop()
        listener.stop()
        cam_times = TimedCamera.last.times
        talking = [(t_audio, sent, own) for (k, t_audio, inferred, _, _, own), sent in zip(shown, cam_times, strict=True)
                   if k >= 0 and inferred]
        x, y = ring.read(0, ring.total), recorded.read(0, recorded.total)
        try:
            result = sync_report(x, steady_clock(ring), y, steady_clock(recorded), talking,
                                 max_delay_s=max(2.0, offset_ms / 1000 + 1.0))
        except ValueError as exc:  # the recording or its clocks do not allow a measurement
            raise AvatarCamError(f"bench av-sync could not measure voice against lips: {exc}",
                                 hint="run it again for longer (--seconds 60) with nothing else using the sound "
                                      "server; `pactl list short sources` should list avatar_cam_mic while it runs"
                                 ) from None
        latency = [lat for k, _, inferred, lat, _, _ in shown if k >= 0 and inferred and lat is not None]
        ready = [d for k, _, inferred, _, d, _ in shown if k >= 0 and inferred and d is not None]
    result.update({
        "engine": engine, "weights": weights_note, "delay_ms": status["delay_ms"], "offset_setting_ms": offset_ms,
        "frame_latency_ms_p5_p50_p95": [round(1000 * float(v), 1) for v in np.percentile(latency, [5, 50, 95])],
        "frame_ready_ms_p5_p50_p95": [round(1000 * float(v), 1) for v in np.percentile(ready, [5, 50, 95])],
        "clock_drift_ppm": status["drift_ppm"], "jumps": status["jumps"], "holds": status["holds"],
        "underruns": status["underruns"], "breakups": status["breakups"], "cpu_pct": cpu_pct,
    })
    return result
