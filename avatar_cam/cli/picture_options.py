"""The picture options that `run` and `render` share, and the renderer they describe (through live/assemble.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avatar_cam.errors import AvatarCamError
from avatar_cam.lipsync.registry import ENGINES, make_lipsync
from avatar_cam.live.assemble import Picture, build_renderer, load_portrait
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.performance import DEFAULT, MODES
from avatar_cam.video.compositor import OutputFormat, parse_size
from avatar_cam.video.idle_motion import IdleSettings


def add_picture_options(p: argparse.ArgumentParser, photo_required: bool) -> None:
    p.add_argument("--photo", type=Path, required=photo_required, help="portrait photo (jpg, png, ...)")
    p.add_argument("--face-box", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="set the face box by hand (photo pixels)")
    p.add_argument("--engine", choices=ENGINES, default=None,
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
    p.add_argument("--performance", choices=tuple(MODES), default=DEFAULT,
                   help="how much of the machine lip-sync may take: " + "; ".join(f"{m.name}: {m.summary}" for m in MODES.values())
                   + f" (default {DEFAULT})")


def picture_from_args(args: argparse.Namespace, fps_default: float) -> Picture:
    try:
        w, h = parse_size(args.size)
        fmt = OutputFormat(w, h, args.fit, args.mirror)
        clock = FrameClock(args.fps or fps_default, args.lookahead_ms / 1000.0)
    except ValueError as exc:
        raise AvatarCamError(str(exc)) from None
    # An engine the user named must run; by default Wav2Lip falls back to lite (and says so) without weights.
    return Picture(fmt=fmt, clock=clock, engine=args.engine or "wav2lip", device=args.device, precision=args.precision,
                   idle=IdleSettings() if args.idle == "on" else IdleSettings.off(), fallback=args.engine is None,
                   performance=args.performance)


def renderer_from_args(args: argparse.Namespace, fps_default: float, whole_machine: bool = False):
    """(renderer, picture) for the photo and picture options of `args`; notes about the photo go to stderr.
    `whole_machine`: the engine may use every core (an offline render), whatever the performance mode says."""
    picture = picture_from_args(args, fps_default)
    portrait = load_portrait(args.photo, args.face_box)
    for note in portrait.notes:
        print(f"note: {note}", file=sys.stderr)
    lipsync = make_lipsync(picture.engine, picture.device, picture.precision, picture.fallback,
                           streams=0) if whole_machine else None
    return build_renderer(portrait, picture, lipsync), picture
