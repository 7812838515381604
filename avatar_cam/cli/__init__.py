"""The `avatar-cam` command (`avatar_cam.cli:main`): one module per command here, each registering its own
subcommand; this file only wires them, and sets up logging to the user's log dir."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys

from avatar_cam import __version__, paths
from avatar_cam.errors import AvatarCamError

log = logging.getLogger("avatar_cam")


def setup_logging(verbose: bool = False) -> None:
    """Log to a rotating file in the user's log dir, and warnings (or everything with -v) to stderr."""
    root = logging.getLogger("avatar_cam")
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    try:
        paths.log_dir().mkdir(parents=True, exist_ok=True)
        file = logging.handlers.RotatingFileHandler(paths.log_dir() / "avatar-cam.log", maxBytes=2_000_000, backupCount=3)
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file.setLevel(logging.DEBUG)
        root.addHandler(file)
    except OSError as exc:  # a read-only home must not stop the camera
        log.warning("cannot write the log file in %s: %s", paths.log_dir(), exc)


# Commands that must start fast (keyboard shortcuts, scripts, a slow machine): only their own module is
# imported for them, not every command's (the others pull in NumPy, OpenCV, OpenVINO...).
LIGHT_COMMANDS = ("ctl",)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-cam", description="A lip-synced virtual webcam from one portrait photo.")
    parser.add_argument("--version", action="version", version=f"avatar-cam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages (they always go to the log file)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if only == "ctl":
        from avatar_cam.cli import ctl

        ctl.register(sub)
        return parser
    from avatar_cam import bench
    from avatar_cam.cli import ctl, daemon, demo, doctor, models, render, run

    run.register(sub)
    render.register(sub)
    demo.register(sub)
    models.register(sub)
    bench.register(sub)
    ctl.register(sub)
    daemon.register(sub)
    doctor.register(sub)
    return parser


def command_word(argv: list[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    word = command_word(sys.argv[1:] if argv is None else argv)
    parser = build_parser(word if word in LIGHT_COMMANDS else None)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None and args.command is None:  # `avatar-cam` alone: the tray daemon
        from avatar_cam.cli import daemon

        func = daemon.main
    if func is None:
        parser.print_help()
        return 0
    try:
        return int(func(args) or 0)
    except AvatarCamError as exc:
        log.debug("failed", exc_info=True)
        print(f"avatar-cam: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avatar-cam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
