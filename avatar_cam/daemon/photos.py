"""The photo library: the photos folder the tray lists (files dropped there appear), and adding a photo to it."""

from __future__ import annotations

import shutil
from pathlib import Path

from avatar_cam import paths
from avatar_cam.errors import AvatarCamError

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def photos_dir() -> Path:
    return paths.data_dir() / "photos"

def photo_library() -> list[Path]:
    """Photos in the library folder (the tray lists them; files dropped there appear)."""
    folder = photos_dir()
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()), key=lambda p: p.name.lower())


def copy_into_library(source: Path) -> Path:
    """Copy `source` into the photos folder under a name not taken yet (a photo already there stays where it is)."""
    photos_dir().mkdir(parents=True, exist_ok=True)
    dest = photos_dir() / source.name
    n = 1
    while dest.exists() and dest.resolve() != source.resolve():
        dest = photos_dir() / f"{source.stem}-{n}{source.suffix}"
        n += 1
    if dest.resolve() != source.resolve():
        shutil.copy2(source, dest)
    return dest


def current_photo(settings) -> Path:
    """The photo to show: the chosen one, else the first in the library (which becomes the chosen one)."""
    if settings.photo and Path(settings.photo).is_file():
        return Path(settings.photo)
    library = photo_library()
    if library:
        settings.photo = str(library[0])
        return library[0]
    raise AvatarCamError("no photo chosen yet", hint="add one from the tray (Photo > Add photo...) or: avatar-cam ctl photo PATH")
