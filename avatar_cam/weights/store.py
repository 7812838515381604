"""Where model weights live, what the manifest offers, and what is installed.

The models folder is `paths.models_dir()` (on Linux `~/.local/share/avatar-cam/models`):

    wav2lip_gan.pth         a checkpoint; only ever put there after it validated (download.py, import)
    wav2lip_gan.json        its record: file, size, SHA-256, where it came from, when
    wav2lip_gan.pth.part    an interrupted download, resumed by the next fetch

The manifest (`models/manifest.toml`) lists what can be fetched and from where. Licence acceptance is
remembered per asset in `paths.data_dir() / "accepted-licenses.json"`, so the user is asked once.

Environment:
    AVATAR_CAM_MODEL_URLS   comma-separated URLs that replace the manifest's for `fetch` (whichever asset
                            is fetched): a local mirror, or the tests' local server. They must be https://,
                            or plain http:// to 127.0.0.1/localhost. The manifest's expected size, if any,
                            is not applied to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from avatar_cam import paths
from avatar_cam.errors import AvatarCamError, CheckpointError, ModelNotInstalledError
from avatar_cam.wav2lip.checkpoint import sha256_of, validate_checkpoint
from avatar_cam.weights.download import download

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_MODEL = "wav2lip_gan"
URLS_ENV = "AVATAR_CAM_MODEL_URLS"
_ACCEPTED_FILE = "accepted-licenses.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Asset:
    """One entry of the manifest: a model file that can be fetched."""

    name: str
    file: str
    description: str
    urls: tuple[str, ...]
    engine: str
    license: str  # licence id, e.g. "wav2lip-noncommercial"
    license_title: str
    license_notice: Path  # the notice shown before download
    size: int | None = None  # bytes, only where every listed URL serves the same size

    @property
    def path(self) -> Path:
        return paths.models_dir() / self.file


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path
    size: int
    sha256: str
    source: str  # the URL it came from, "imported from PATH", or "unknown" without a record
    installed_at: str | None  # ISO 8601, UTC
    engine: str
    in_manifest: bool


# --- the manifest ---------------------------------------------------------------------------------------


def manifest() -> dict[str, Asset]:
    """The assets of `models/manifest.toml`, by name, in manifest order."""
    path = paths.manifest_dir() / "manifest.toml"
    broken = "reinstall avatar-cam (the file ships with it)"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AvatarCamError(f"cannot read the model manifest {path}: {exc.strerror}", hint=broken) from None
    except tomllib.TOMLDecodeError as exc:
        raise AvatarCamError(f"the model manifest {path} is not valid TOML: {exc}", hint=broken) from None
    try:
        licenses = data.get("licenses", {})
        assets = {}
        for entry in data["assets"]:
            lic = licenses[entry["license"]]
            size = entry.get("size")
            assets[entry["name"]] = Asset(
                name=str(entry["name"]),
                file=str(entry["file"]),
                description=str(entry.get("description", "")),
                urls=tuple(str(u) for u in entry["urls"]),
                engine=str(entry["engine"]),
                license=str(entry["license"]),
                license_title=str(lic.get("title", entry["license"])),
                license_notice=path.parent / str(lic["notice"]),
                size=int(size) if size is not None else None,
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise AvatarCamError(f"the model manifest {path} is incomplete or malformed ({exc!r})", hint=broken) from None
    return assets


def asset(name: str | None = None) -> Asset:
    """The manifest entry called `name` (default: DEFAULT_MODEL)."""
    assets = manifest()
    name = name or DEFAULT_MODEL
    if name not in assets:
        raise AvatarCamError(
            f"there is no model called {name!r} to fetch; choose one of: {', '.join(assets)}", hint="avatar-cam models list"
        )
    return assets[name]


def license_notice(a: Asset) -> str:
    try:
        return a.license_notice.read_text(encoding="utf-8")
    except OSError:
        return f"{a.license_title}\n(The notice file {a.license_notice} is missing.)\n"


# --- licence acceptance ---------------------------------------------------------------------------------


def _accepted_path() -> Path:
    return paths.data_dir() / _ACCEPTED_FILE


def _accepted() -> dict:
    try:
        data = json.loads(_accepted_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def license_accepted(a: Asset) -> bool:
    """Whether the user has accepted this asset's licence before (the same licence id)."""
    entry = _accepted().get(a.name)
    return isinstance(entry, dict) and entry.get("license") == a.license


def record_license_acceptance(a: Asset) -> None:
    accepted = _accepted()
    accepted[a.name] = {"license": a.license, "accepted_at": _now()}
    _write_json(_accepted_path(), accepted)


# --- what is installed ----------------------------------------------------------------------------------


def installed() -> list[InstalledModel]:
    """Installed models: manifest assets first (in manifest order), then any other checkpoint in the folder."""
    assets = manifest()
    found = [_describe(a.name, a.path, a) for a in assets.values() if a.path.is_file()]
    known = {a.file for a in assets.values()}
    folder = paths.models_dir()
    if folder.is_dir():
        found += [_describe(p.stem, p, None) for p in sorted(folder.glob("*.pth")) if p.name not in known and p.is_file()]
    return found


def find_installed(name: str) -> InstalledModel | None:
    path = _model_path(name)
    if path is None or not path.is_file():
        return None
    return _describe(name, path, manifest().get(name))


def installed_checkpoint(name: str | None = None) -> Path:
    """The checkpoint file to load: `name`, or the default, or the first installed of the manifest's models."""
    if name is not None:
        path = _model_path(name)
        if path is not None and path.is_file():
            return path
        raise ModelNotInstalledError(f"the model {name!r} is not installed", hint=_install_hint(name))
    assets = manifest()
    for candidate in (DEFAULT_MODEL, *(n for n in assets if n != DEFAULT_MODEL)):
        path = _model_path(candidate, assets)
        if path is not None and path.is_file():
            return path
    raise ModelNotInstalledError("no Wav2Lip weights are installed", hint=_install_hint(None))


def _install_hint(name: str | None) -> str:
    fetch = "avatar-cam models fetch" + (f" {name}" if name else "")
    return (
        f"run `{fetch}` to download them (the Wav2Lip weights are for personal, research and non-commercial use "
        "only), or download them yourself and run `avatar-cam models import PATH`; the Lite engine needs no weights"
    )


def _model_path(name: str, assets: dict[str, Asset] | None = None) -> Path | None:
    assets = manifest() if assets is None else assets
    if name in assets:
        return assets[name].path
    return paths.models_dir() / f"{name}.pth" if _NAME.fullmatch(name) else None


def _record_path(name: str) -> Path:
    return paths.models_dir() / f"{name}.json"


def _describe(name: str, path: Path, a: Asset | None) -> InstalledModel:
    """Trust the record only if it still matches the file; otherwise hash the file now."""
    st = path.stat()
    try:
        rec = json.loads(_record_path(name).read_text(encoding="utf-8"))
        fresh = rec["file"] == path.name and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns
    except (OSError, ValueError, KeyError, TypeError):
        rec, fresh = {}, False
    engine = a.engine if a else rec.get("engine", "unknown")
    if fresh:
        sha256, source, when = rec["sha256"], rec.get("source", "unknown"), rec.get("installed_at")
    else:
        sha256, when = sha256_of(path), None
        source = "unknown (the file changed after it was installed)" if rec else "unknown (no install record)"
    return InstalledModel(name, path, st.st_size, sha256, source, when, engine, a is not None)


def _record(name: str, path: Path, *, source: str, engine: str, sha256: str | None = None) -> InstalledModel:
    """Write `<name>.json` beside a file that has just been validated and put in place."""
    st = path.stat()
    sha256 = sha256 or sha256_of(path)
    when = _now()
    a = manifest().get(name)
    _write_json(
        _record_path(name),
        {
            "name": name, "file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256,
            "source": source, "installed_at": when, "engine": engine, "license": a.license if a else None,
        },
    )
    return InstalledModel(name, path, st.st_size, sha256, source, when, engine, a is not None)


# --- getting a model ------------------------------------------------------------------------------------


def fetch(
    name: str | None = None, accept_license: bool = False, *, force: bool = False, timeout: float = 20.0, progress: bool = True
) -> InstalledModel:
    """Download, validate and record the asset `name` (default: DEFAULT_MODEL).

    The licence must be accepted now (`accept_license`, which is remembered) or earlier. An installed model is
    returned as it is unless `force`; a forced download replaces the old file only once the new one validated.
    """
    a = asset(name)
    if not force and (existing := find_installed(a.name)):
        return existing
    if accept_license:
        record_license_acceptance(a)
    elif not license_accepted(a):
        raise AvatarCamError(
            f"{a.file} is licensed for personal, research and non-commercial use only, and that has not been accepted",
            hint=f"read {a.license_notice}, then run: avatar-cam models fetch {a.name} --accept-license",
        )
    override = [u.strip() for u in os.environ.get(URLS_ENV, "").split(",") if u.strip()]
    url = download(
        override or a.urls, a.path, expected_size=None if override else a.size, validate=validate_checkpoint,
        timeout=timeout, progress=progress,
    )
    return _record(a.name, a.path, source=url, engine=a.engine)


def infer_name(path: Path) -> str:
    """The model a downloaded file most likely is, from its name ("Wav2Lip_GAN (1).pth" -> wav2lip_gan)."""
    assets = manifest()
    lower = path.name.lower()
    for a in assets.values():
        if lower == a.file:
            return a.name
    if "gan" in lower and "wav2lip_gan" in assets:
        return "wav2lip_gan"
    if "wav2lip" in lower and "wav2lip" in assets:
        return "wav2lip"
    return DEFAULT_MODEL


def import_checkpoint(path: str | Path, name: str | None = None) -> InstalledModel:
    """Validate a checkpoint the user downloaded, copy it into the models folder and record its SHA-256.

    `name` defaults to `infer_name(path)`. Raises CheckpointError (nothing is copied) if it is not a Wav2Lip
    generator. Importing the installed file itself, or the same file twice, is fine.
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise CheckpointError(f"no file at {src}", hint="give the path of a downloaded wav2lip.pth or wav2lip_gan.pth")
    name = name.removesuffix(".pth") if name else infer_name(src)
    dest = _model_path(name)
    if dest is None:
        raise AvatarCamError(
            f"{name!r} cannot be a model name", hint="use letters, digits, '_', '-' or '.', e.g. --name my_wav2lip"
        )
    validate_checkpoint(src)
    a = manifest().get(name)
    engine = a.engine if a else "wav2lip"  # it validated as a Wav2Lip generator
    if dest.is_file() and os.path.samefile(src, dest):
        previous = find_installed(name)
        source = previous.source if previous and previous.installed_at else f"imported from {src.resolve()}"
        return _record(name, dest, source=source, engine=engine)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        sha256 = _copy_hashing(src, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise AvatarCamError(f"cannot copy {src} to {dest}: {exc.strerror or exc}", hint="check the free disk space") from None
    finally:
        tmp.unlink(missing_ok=True)
    return _record(name, dest, source=f"imported from {src.resolve()}", engine=engine, sha256=sha256)


def _copy_hashing(src: Path, dest: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(chunk):
            h.update(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


# --- small helpers --------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _write_json(path: Path, data: dict) -> None:
    """Write via a temporary file and os.replace, so a crash never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise AvatarCamError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
