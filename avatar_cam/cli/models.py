"""`avatar-cam models list | fetch | import`: see, download and install the Wav2Lip weights."""

from __future__ import annotations

import argparse
import json
import sys

from avatar_cam import paths
from avatar_cam.errors import AvatarCamError
from avatar_cam.weights import store as model_store


def register(subparsers) -> None:
    models = subparsers.add_parser(
        "models", help="list, fetch or import the Wav2Lip weights", description="See, download and install model weights."
    )
    models.set_defaults(func=_list, json=False)  # `avatar-cam models` alone lists
    sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    p = sub.add_parser("list", help="show which models are installed, where, and their SHA-256")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_list)

    p = sub.add_parser(
        "fetch", help="download a model (asks you to accept its licence first)",
        description="Download model weights, check them and install them. The Wav2Lip weights are for personal, "
        "research and non-commercial use only; you are asked to accept that once.",
    )
    p.add_argument("name", nargs="?", default=model_store.DEFAULT_MODEL, metavar="NAME",
                   help=f"which model (default: {model_store.DEFAULT_MODEL}; see `avatar-cam models list`)")
    p.add_argument("--accept-license", action="store_true", help="accept the licence without being asked (for scripts)")
    p.add_argument("--force", action="store_true", help="download again even if it is installed")
    p.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                   help="give up on a source after this long without data (default: 20)")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("import", help="install a checkpoint you downloaded yourself")
    p.add_argument("path", metavar="PATH", help="a wav2lip.pth or wav2lip_gan.pth file")
    p.add_argument("--name", help="install it under this name (default: guessed from the file name)")
    p.set_defaults(func=_import)


# --- list -----------------------------------------------------------------------------------------------


def _rows() -> list[dict]:
    assets = model_store.manifest()
    installed = {m.name: m for m in model_store.installed()}
    rows = []
    for name, a in assets.items():
        m = installed.pop(name, None)
        rows.append(_row(name, a.path, m, engine=a.engine, license=a.license, description=a.description, in_manifest=True))
    for name, m in installed.items():
        rows.append(_row(name, m.path, m, engine=m.engine, license=None, description="", in_manifest=False))
    return rows


def _row(name, path, m, **extra) -> dict:
    return {
        "name": name, "default": name == model_store.DEFAULT_MODEL, "installed": m is not None, "path": str(path),
        "size": m.size if m else None, "sha256": m.sha256 if m else None, "source": m.source if m else None,
        "installed_at": m.installed_at if m else None, **extra,
    }


def _list(args: argparse.Namespace) -> int:
    rows = _rows()
    if args.json:
        print(json.dumps({"models_dir": str(paths.models_dir()), "default": model_store.DEFAULT_MODEL, "models": rows}, indent=2))
        return 0
    table = [("NAME", "STATUS", "SIZE", "SHA-256", "ENGINE", "PATH")]
    for r in rows:
        table.append((
            r["name"] + (" (default)" if r["default"] else ""),
            "installed" if r["installed"] else "not installed",
            f"{r['size'] / 1e6:.1f} MB" if r["installed"] else "-",
            r["sha256"][:12] if r["installed"] else "-",
            r["engine"],
            r["path"] if r["installed"] else "-",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"\nModels folder: {paths.models_dir()}")
    if not any(r["installed"] for r in rows):
        print(
            "No model is installed. Download the default with `avatar-cam models fetch`, or import a file you "
            "downloaded with `avatar-cam models import PATH`. The Lite engine needs no model."
        )
    return 0


# --- fetch ----------------------------------------------------------------------------------------------


def _fetch(args: argparse.Namespace) -> int:
    a = model_store.asset(args.name)
    existing = model_store.find_installed(a.name)
    if existing and not args.force:
        print(f"{a.name} is already installed: {existing.path} (SHA-256 {existing.sha256})")
        print(f"Use `avatar-cam models fetch {a.name} --force` to download it again.")
        return 0
    if args.accept_license:
        print(f"Licence accepted with --accept-license: {a.license_title} (see {a.license_notice})", file=sys.stderr)
    elif not model_store.license_accepted(a):
        if not _ask_license(a):
            print("Licence not accepted; nothing was downloaded.", file=sys.stderr)
            return 1
        model_store.record_license_acceptance(a)
    m = model_store.fetch(a.name, accept_license=args.accept_license, force=args.force, timeout=args.timeout, progress=True)
    print(f"Installed {m.name}: {m.path}")
    print(f"  {m.size / 1e6:.1f} MB, SHA-256 {m.sha256}")
    print(f"  from {m.source}")
    return 0


def _ask_license(a: model_store.Asset) -> bool:
    """Show the notice and ask once. Without a terminal to ask on, refuse with the flag that accepts."""
    notice = model_store.license_notice(a)
    if not sys.stdin.isatty():
        print(notice, file=sys.stderr)
        raise AvatarCamError(
            f"{a.file} is for personal, research and non-commercial use only, and there is no terminal to ask you "
            "to accept that",
            hint=f"read the notice above, then run: avatar-cam models fetch {a.name} --accept-license",
        )
    print(notice)
    try:
        answer = input(f"Type yes to accept these terms and download {a.file}: ")
    except EOFError:
        return False
    return answer.strip().lower() == "yes"


# --- import ---------------------------------------------------------------------------------------------


def _import(args: argparse.Namespace) -> int:
    m = model_store.import_checkpoint(args.path, name=args.name)
    print(f"Imported {args.path} as {m.name}: {m.path}")
    print(f"  {m.size / 1e6:.1f} MB, SHA-256 {m.sha256}")
    if args.name is None:
        print("  (name guessed from the file name; use --name to choose another)")
    same_engine = [a for a in model_store.manifest().values() if a.engine == m.engine]
    if same_engine:
        a = next((a for a in same_engine if a.name == m.name), same_engine[0])
        print(f"  Licence: {a.license_title} (see {a.license_notice})")
    return 0
