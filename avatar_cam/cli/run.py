"""`avatar-cam run`: the live camera in the foreground, from a microphone or a file, until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from avatar_cam.cli.picture_options import add_picture_options, renderer_from_args
from avatar_cam.errors import AvatarCamError
from avatar_cam.live.performance import performance

log = logging.getLogger(__name__)

FPS_DEFAULT = 30.0


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the live camera in the foreground (Ctrl-C stops it)")
    add_picture_options(run, photo_required=True)
    run.add_argument("--mic", default=None, help="microphone name (or part of it) or index; default: the system's")
    run.add_argument("--audio-file", type=Path, help="play this file in real time instead of listening to a microphone")
    run.add_argument("--camera-backend", default=None, help="pyvirtualcam backend (v4l2loopback, obs, unitycapture)")
    run.add_argument("--camera-device", default=None, help="virtual camera device, e.g. /dev/video10")
    run.add_argument("--no-camera", action="store_true", help="do not open a virtual camera (preview or record only)")
    run.add_argument("--preview", action="store_true", help="show a preview window")
    run.add_argument("--record", type=Path, help="also record to this mp4 file (with the microphone audio)")
    run.add_argument("--virtual-mic", action="store_true",
                     help="also play the voice, delayed to meet the lips, as the microphone \"Avatar Cam Microphone\" "
                     "(Linux: made with PulseAudio/PipeWire; Windows/macOS: through VB-CABLE or BlackHole)")
    run.add_argument("--mic-offset-ms", type=float, default=0.0, metavar="MS",
                     help="with --virtual-mic: delay the voice this much more (negative: less) than measured")
    run.add_argument("--no-tray", action="store_true", help="no tray icon (this command always runs without one)")
    run.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    run.set_defaults(func=cmd_run, fps_default=FPS_DEFAULT)


def cmd_run(args: argparse.Namespace) -> int:
    from avatar_cam.audio.ring import AudioRing
    from avatar_cam.audio.sources import FileSource, MicrophoneSource
    from avatar_cam.live.pipeline import LivePipeline
    from avatar_cam.live.records import summarize
    from avatar_cam.outputs.camera import VirtualCameraSink
    from avatar_cam.outputs.preview import PreviewSink
    from avatar_cam.outputs.recorder import Mp4Recorder

    renderer, picture = renderer_from_args(args, FPS_DEFAULT)
    fmt, clock = picture.fmt, picture.clock
    ring = AudioRing()
    if args.audio_file:
        source = FileSource(args.audio_file, ring, realtime=True)
    else:
        source = MicrophoneSource(ring, device=args.mic)
    sinks: list = []
    vmic = None
    try:
        if not args.no_camera:
            cam = VirtualCameraSink(fmt.width, fmt.height, clock.fps, backend=args.camera_backend, device=args.camera_device)
            sinks.append(cam)
            print(f"Avatar Cam is live on {cam.device}: choose it as the camera in your call app or OBS.", flush=True)
        if args.preview:
            sinks.append(PreviewSink())
        recorder = Mp4Recorder(args.record, fmt.width, fmt.height, clock.fps) if args.record else None
        if recorder:
            sinks.append(recorder)
        pipeline = LivePipeline(renderer, sinks, ring, clock, audio_taps=[recorder.write_audio] if recorder else [],
                                performance=performance(picture.performance))
        _stop_on_signals(pipeline)
        if args.virtual_mic:
            vmic = _start_virtual_mic(ring, clock, args.mic_offset_ms)
            if vmic is not None:
                pipeline.on_frame, pipeline.pace = vmic.observe_frame, vmic.frame_due
        source.start()
        _stop_when_done(pipeline, source, args.seconds)
        print("Ctrl-C stops.", file=sys.stderr)
        pipeline.run()
    finally:
        source.stop()
        if vmic is not None:
            vmic.close()
        for sink in sinks:
            sink.close()
    s = summarize(pipeline.stats.records, clock.fps)
    print(f"stopped: {s['frames']} frames, {s['fps']} fps, mouth latency p95 {s['latency_ms_p95']} ms "
          f"({renderer.lipsync.name} engine)", file=sys.stderr)
    if getattr(source, "error", None) is not None:  # the audio file was damaged partway
        raise source.error
    return 0


def _start_virtual_mic(ring, clock, offset_ms: float):
    """"Avatar Cam Microphone" fed from `ring`, or None (and a warning) where it cannot be made: the camera
    runs either way."""
    from avatar_cam.vmic.microphone import VirtualMicrophone

    vmic = VirtualMicrophone.for_clock(ring, clock, offset_ms)
    try:
        vmic.start()
    except AvatarCamError as exc:
        print(f"warning: no Avatar Cam Microphone: {exc}\n  the camera runs without it", file=sys.stderr)
        return None
    print(f"Avatar Cam Microphone is live: choose {vmic.call_app_device!r} as the microphone in your call app "
          f"(the voice is delayed {1000 * vmic.delay_s:.0f} ms to meet the lips, then follows the measured delay).",
          flush=True)
    return vmic


def _stop_on_signals(pipeline) -> None:
    def handler(signum, _frame):
        log.info("signal %d: stopping", signum)
        pipeline.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _stop_when_done(pipeline, source, seconds: float | None) -> None:
    """Stop after `seconds`, or once a file source has played out and its last frames are drawn."""
    start = time.monotonic()

    def watch() -> None:
        finished = getattr(source, "finished", None)
        while not pipeline.stopped:
            if seconds is not None and time.monotonic() - start >= seconds:
                break
            if finished is not None and finished.is_set() and pipeline.audio_stalled:
                break
            time.sleep(0.05)
        pipeline.stop()

    threading.Thread(target=watch, name="run-timer", daemon=True).start()
