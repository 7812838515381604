"""settings.toml: every field survives a save and a load; damage never stops the app and never loses the file."""

from __future__ import annotations

import dataclasses
import os
import stat

import pytest

from avatar_cam.settings import Settings

FIELDS = [f.name for f in dataclasses.fields(Settings) if f.name != "notices"]


def every_field_changed() -> Settings:
    return Settings(
        photo="/home/someone/Pictures/me.jpg", face_box=[10, 20, 110, 140], mic="USB Microphone",
        camera_backend="obs", camera_device="/dev/video10", width=640, height=480, fps=25.0, fit="pad", mirror=True,
        engine="lite", device="GPU", precision="f16", lookahead_ms=120.0, camera_on=False, start_at_login=True,
        virtual_mic=True, virtual_mic_offset_ms=35.5, idle_blinks=False, idle_head_motion=False, idle_breathing=False,
        preview=True, performance="light",
    )


def test_every_field_round_trips():
    changed, default = every_field_changed(), Settings()
    assert [n for n in FIELDS if getattr(changed, n) == getattr(default, n)] == []  # the test covers every field
    changed.save()
    loaded = Settings.load()
    assert {n: getattr(loaded, n) for n in FIELDS} == {n: getattr(changed, n) for n in FIELDS}
    assert loaded.notices == []
    assert Settings.path().read_text().startswith("# Avatar Cam settings")


def test_defaults_round_trip_and_none_means_default(tmp_path):
    Settings().save()
    assert Settings.load() == Settings()
    assert Settings.load(tmp_path / "missing.toml") == Settings()  # no file yet: defaults, nothing to say
    assert Settings.load(tmp_path / "missing.toml").notices == []


def test_whole_numbers_for_float_fields_load_as_floats():
    Settings.path().parent.mkdir(parents=True, exist_ok=True)
    Settings.path().write_text("fps = 25\nlookahead_ms = 100\n")
    s = Settings.load()
    assert (s.fps, s.lookahead_ms) == (25.0, 100.0)
    assert isinstance(s.fps, float) and isinstance(s.lookahead_ms, float)
    assert s.notices == []


@pytest.mark.parametrize("damage", [b"width = = 3\n[[[", b"\xff\xfe\x00garbage\x80", b'photo = "unterminated\n'],
                         ids=["bad-toml", "not-utf8", "unterminated-string"])
def test_damaged_file_is_kept_aside_and_defaults_are_used(damage: bytes):
    path = Settings.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(damage)
    s = Settings.load()
    assert s == Settings()
    kept = [p for p in path.parent.iterdir() if p.name.startswith("settings.toml.corrupt-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damage  # nothing the user wrote is lost
    assert not path.exists()
    assert len(s.notices) == 1 and str(path) in s.notices[0] and str(kept[0]) in s.notices[0] and "defaults" in s.notices[0]
    # The next start finds no file (not the damaged one again), and saving writes a good one.
    assert Settings.load().notices == []
    s.photo = "/tmp/new.png"
    s.save()
    assert Settings.load().photo == "/tmp/new.png"


def test_a_wrong_typed_value_falls_back_alone():
    path = Settings.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        'width = "wide"\nheight = 480\nmirror = "yes"\nfps = true\nface_box = [1, 2, 3]\nmic = 3\n'
        'photo = "/p/me.png"\nengine = ["lite"]\ncamera_on = false\nlookahead_ms = 90.5\nunknown_key = 1\n'
    )
    s = Settings.load()
    d = Settings()
    # The bad ones are defaults...
    assert (s.width, s.mirror, s.fps, s.face_box, s.mic, s.engine) == (d.width, d.mirror, d.fps, d.face_box, d.mic, d.engine)
    # ...the good ones are kept.
    assert (s.height, s.photo, s.camera_on, s.lookahead_ms) == (480, "/p/me.png", False, 90.5)
    named = " ".join(s.notices)
    assert len(s.notices) == 6
    for name in ("width", "mirror", "fps", "face_box", "mic", "engine"):
        assert f"setting {name} =" in named
    assert path.exists()  # a file with a few bad values is not moved aside


def test_file_is_readable_by_its_owner_only():
    old = os.umask(0)  # even with a permissive umask
    try:
        Settings(photo="/p/me.png").save()
    finally:
        os.umask(old)
    path = Settings.path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Settings(photo="/p/other.png").save()  # rewriting keeps it private (a new file each time: atomic rename)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["settings.toml"]  # no temp files left behind


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(monkeypatch):
    Settings(photo="/p/me.png").save()
    import tomli_w

    def broken_dump(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tomli_w, "dump", broken_dump)
    with pytest.raises(OSError):
        Settings(photo="/p/other.png").save()
    assert Settings.load().photo == "/p/me.png"
    assert [p.name for p in Settings.path().parent.iterdir()] == ["settings.toml"]


def test_an_unknown_performance_mode_falls_back_to_balanced_and_says_so():
    Settings.path().parent.mkdir(parents=True, exist_ok=True)
    Settings.path().write_text('performance = "turbo"\nfit = "pad"\n')
    loaded = Settings.load()
    assert loaded.performance == "balanced" and loaded.fit == "pad"
    assert any("performance" in n and "turbo" in n for n in loaded.notices)
