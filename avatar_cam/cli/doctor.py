"""`avatar-cam doctor [--json]`: run the checks (avatar_cam/doctor/) and print each with its fix."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from avatar_cam.doctor import run_checks


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check this machine and say exactly how to fix what is missing",
                              description="Check Python, audio, the virtual camera, the tray, OpenVINO, models, the "
                              "virtual microphone and folders; print each as ok or with the command that fixes it. "
                              "Exit status 1 if something essential is missing.")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks()
    healthy = all(c.ok for c in checks if c.essential)
    if args.json:
        print(json.dumps({"ok": healthy, "checks": [asdict(c) for c in checks]}, indent=2))
        return 0 if healthy else 1
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok" if c.ok else "!!"
        note = "" if c.ok or c.essential else " (optional)"
        print(f"{mark}  {c.name.ljust(width)}  {c.detail}{note}")
        if not c.ok and c.fix:
            print(f"    {' ' * width}  fix: {c.fix}")
    failed = [c for c in checks if not c.ok and c.essential]
    optional = [c for c in checks if not c.ok and not c.essential]
    if failed:
        print(f"\n{len(failed)} essential problem(s): {', '.join(c.name for c in failed)}. Fix them and run "
              "`avatar-cam doctor` again.")
    else:
        print("\nEverything essential is in place." + (f" {len(optional)} optional item(s) above." if optional else ""))
    return 0 if healthy else 1
