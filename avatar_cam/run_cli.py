"""`avatar-cam run` (the live camera, in the foreground) and `avatar-cam render` (photo + audio -> mp4)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from .errors import AvatarCamError

log = logging.getLogger(__name__)


def add_picture_options(p: argparse.ArgumentParser, photo_required: bool) -> None:
    p.add_argument("--photo", type=Path, required=photo_required, help="portrait photo (jpg, png, ...)")
    p.add_argument("--face-box", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="set the face box by hand (photo pixels)")
    p.add_argument("--engine", choices=["wav2lip", "lite"], default=None,
                   help="lip-sync engine: wav2lip (needs `avatar-cam models fetch`) or lite (no download). "
                   "Default: wav2lip if its weights are installed, else lite")
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU or AUTO (default CPU)")
    p.add_argument("--precision", default="f32", choices=["f32", "bf16", "f16"], help="inference precision (default f32)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate")
    p.add_argument("--size", default="1280x720", help="output size WxH (default 1280x720)")
    p.add_argument("--fit", choices=["crop", "pad"], default="crop", help="fill the frame (crop) or show the whole photo (pad)")
    p.add_argument("--mirror", action="store_true", help="mirror the picture horizontally")
    p.add_argument("--lookahead-ms", type=float, default=160.0, help="audio lookahead per frame (default 160, as in training)")
    p.add_argument("--idle", choices=["on", "off"], default="on", help="blinks, head motion and breathing (default on)")


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
    run.set_defaults(func=cmd_run, fps_default=30.0)

    render = sub.add_parser("render", help="render a lip-synced mp4 from a photo and an audio file, as fast as possible")
    add_picture_options(render, photo_required=True)
    render.add_argument("--audio", type=Path, required=True, help="speech audio (wav, mp3, flac, ogg)")
    render.add_argument("--output", "-o", type=Path, required=True, help="the mp4 to write")
    render.add_argument("--no-progress", action="store_true")
    render.set_defaults(func=cmd_render, fps_default=25.0)


def build_renderer(args: argparse.Namespace):
    from .compositor import OutputFormat
    from .engines import make_lipsync
    from .frame_clock import FrameClock
    from .idle_motion import IdleSettings
    from .portrait import Portrait
    from .renderer import FrameRenderer

    w, h = _size(args.size)
    fmt = OutputFormat(w, h, args.fit, args.mirror)
    clock = FrameClock(args.fps or args.fps_default, args.lookahead_ms / 1000.0)
    portrait = Portrait.load(args.photo, face_box=tuple(args.face_box) if args.face_box else None)
    for note in portrait.notes:
        print(f"note: {note}", file=sys.stderr)
    # An engine the user named must run; by default Wav2Lip falls back to lite (and says so) without weights.
    lipsync = make_lipsync(args.engine or "wav2lip", args.device, args.precision, fallback=args.engine is None)
    idle = IdleSettings() if args.idle == "on" else IdleSettings.off()
    return FrameRenderer(lipsync, portrait, fmt, clock, idle=idle), fmt, clock


def _size(text: str) -> tuple[int, int]:
    from .compositor import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise AvatarCamError(str(exc)) from None


def cmd_render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .audio_source import load_audio
    from .mel import melspectrogram
    from .sinks import Mp4Recorder

    audio = load_audio(args.audio)
    renderer, fmt, clock = build_renderer(args)
    n = clock.frame_count(len(audio) / 16000)
    mel = melspectrogram(audio)
    rec = Mp4Recorder(args.output, fmt.width, fmt.height, clock.fps, audio=args.audio)
    t0 = time.perf_counter()
    try:
        with tqdm(total=n, unit="frame", desc=f"rendering {args.output.name}", disable=args.no_progress, file=sys.stderr) as bar:
            for frame, _info in renderer.render_clip(mel, audio):
                rec.send(frame)
                bar.update()
    finally:
        rec.close()
    took = time.perf_counter() - t0
    print(f"wrote {args.output}: {rec.frames} frames at {clock.fps:g} fps, {len(audio) / 16000:.2f} s of audio, "
          f"{len(audio) / 16000 / took:.1f}x real time ({renderer.lipsync.name} engine)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .audio_source import AudioRing, FileSource, MicrophoneSource
    from .pipeline import LivePipeline, summarize
    from .sinks import Mp4Recorder, PreviewSink, VirtualCameraSink

    renderer, fmt, clock = build_renderer(args)
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
        pipeline = LivePipeline(renderer, sinks, ring, clock, audio_taps=[recorder.write_audio] if recorder else [])
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
    return 0


def _start_virtual_mic(ring, clock, offset_ms: float):
    """"Avatar Cam Microphone" fed from `ring`, or None (and a warning) where it cannot be made: the camera
    runs either way."""
    from .virtual_mic import VirtualMicrophone

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
