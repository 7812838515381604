"""Audio files as a user hands them over: empty, too short, a folder, a FIFO, a damaged file, a long one.
Each gets a clear message and a fix, never a traceback; a long file streams, so `render` does not grow with it."""

from __future__ import annotations

import os
import subprocess
import tracemalloc

import numpy as np
import pytest
import soundfile
from helpers import run_cli, run_cli_peak_rss

from avatar_cam.audio.file_stream import StreamedAudio
from avatar_cam.audio.mel import melspectrogram
from avatar_cam.audio.ring import AudioRing
from avatar_cam.audio.sources import FileSource, load_audio
from avatar_cam.live.frame_clock import FrameClock
from avatar_cam.live.mel_windows import mel_window


def render(photo, audio, out, *extra):
    return run_cli("render", "--engine", "lite", "--photo", str(photo), "--audio", str(audio), "-o", str(out),
                   "--size", "160x120", "--no-progress", *extra, timeout=300)


def assert_clean(result, words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert words in result.stderr and "\n  -> " in result.stderr, result.stderr


@pytest.mark.parametrize("samples", [0, 1, 300, 799])
def test_empty_or_too_short_audio_is_a_clear_error(astronaut_png, tmp_path, samples):
    wav = tmp_path / "short.wav"
    soundfile.write(wav, np.zeros(samples, np.float32), 16000)
    assert_clean(render(astronaut_png, wav, tmp_path / "o.mp4"), f"holds only {samples * 1000 // 16000} ms of audio")
    assert not (tmp_path / "o.mp4").exists()


def test_a_folder_is_not_an_audio_file(astronaut_png, tmp_path):
    assert_clean(render(astronaut_png, tmp_path, tmp_path / "o.mp4"), "is a folder, not an audio file")


def test_a_fifo_is_refused_without_blocking(astronaut_png, tmp_path):
    fifo = tmp_path / "voice.wav"
    os.mkfifo(fifo)
    assert_clean(render(astronaut_png, fifo, tmp_path / "o.mp4"), "is not a regular file")


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_a_damaged_mp3_says_so(astronaut_png, speech_wav, tmp_path, damage):
    from avatar_cam.outputs.recorder import ffmpeg_exe

    mp3 = tmp_path / "talk.mp3"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(speech_wav), str(mp3)], check=True)
    raw = mp3.read_bytes()
    mp3.write_bytes(os.urandom(len(raw)) if damage == "garbage" else raw[:600])
    result = render(astronaut_png, mp3, tmp_path / "o.mp4")
    assert result.returncode in (0, 2), result.stderr  # a cut file may still hold a little audio
    assert "Traceback" not in result.stderr
    if result.returncode == 2:
        assert "is damaged or not in an audio format" in result.stderr or "holds only" in result.stderr
        assert "ffmpeg -i" in result.stderr or "speech" in result.stderr


@pytest.mark.parametrize("rate, channels", [(16000, 1), (44100, 2), (22050, 1)])
def test_streamed_audio_is_exactly_the_whole_file(tmp_path, rate, channels):
    x = (np.random.default_rng(rate).standard_normal((rate * 5 + 77, channels)) * 0.1).astype(np.float32)
    path = tmp_path / "a.wav"
    soundfile.write(path, x, rate, subtype="FLOAT")
    whole = load_audio(path)
    mel = melspectrogram(whole)
    streamed = StreamedAudio(path)
    assert len(streamed) == len(whole) and streamed.mel.shape == mel.shape
    for start in range(-20, mel.shape[1] + 4, 3):  # the order a render reads in
        a, b = max(start * 200, 0), max((start + 16) * 200, 0)
        np.testing.assert_array_equal(streamed[a:b], whole[a:b])
        np.testing.assert_array_equal(mel_window(streamed.mel, start), mel_window(mel, start))


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    """Ten minutes of 44.1 kHz stereo speech-like noise (212 MB as float32 if decoded whole)."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(path), "synth", "600", "pinknoise",
                    "tremolo", "3", "80", "vol", "0.3"], check=True)
    return path


def test_a_long_file_is_read_with_bounded_memory(ten_minutes):
    clock = FrameClock(25.0)
    tracemalloc.start()
    try:
        audio = StreamedAudio(ten_minutes)
        for k in range(clock.frame_count(len(audio) / 16000)):  # what render_clip reads, frame by frame
            a, b = clock.audio_span(k)
            audio[max(a, 0) : max(b, 0)]
            mel_window(audio.mel, clock.mel_start(k))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(audio) == 600 * 16000
    assert peak < 16 << 20, f"{peak / 1e6:.0f} MB"


def test_render_memory_does_not_grow_with_the_length(astronaut_png, ten_minutes, tmp_path):
    short = tmp_path / "short.wav"
    subprocess.run(["sox", str(ten_minutes), str(short), "trim", "0", "10"], check=True)
    peaks = {}
    for name, audio in (("10 s", short), ("10 min", ten_minutes)):
        result, peaks[name] = run_cli_peak_rss("render", "--engine", "lite", "--photo", str(astronaut_png), "--audio",
                                               str(audio), "-o", str(tmp_path / f"{name}.mp4"), "--size", "160x120",
                                               "--fps", "1", "--no-progress")
        assert result.returncode == 0, result.stderr
    assert peaks["10 min"] < peaks["10 s"] + 40, peaks  # decoded whole, ten minutes took 212 MB more


def test_a_played_file_is_decoded_as_it_plays(ten_minutes):
    """`run --audio-file` (the live path's FileSource) holds a few seconds of a long file, not all of it, and
    plays exactly what a whole decode gives."""
    ring = AudioRing(seconds=30)
    tracemalloc.start()
    try:
        source = FileSource(ten_minutes, ring, realtime=False, block=1600)
        assert source.duration_s == 600.0
        source.start()
        assert source.finished.wait(120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert source.error is None and ring.total == 600 * 16000
    assert peak < 16 << 20, f"{peak / 1e6:.0f} MB"  # decoded whole: 212 MB, then 38 MB at 16 kHz
    whole = load_audio(ten_minutes)
    np.testing.assert_allclose(ring.read(ring.total - 16000 * 20, 16000 * 20), whole[-16000 * 20 :], atol=1e-6)


def test_a_file_damaged_midway_stops_playing_there_and_says_why(speech_wav, tmp_path):
    from avatar_cam.outputs.recorder import ffmpeg_exe

    flac = tmp_path / "talk.flac"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(speech_wav), str(flac)], check=True)
    raw = bytearray(flac.read_bytes())
    at = len(raw) * 3 // 4  # past the first 2 s decoded at once
    raw[at : at + 4000] = os.urandom(4000)
    flac.write_bytes(bytes(raw))
    ring = AudioRing(seconds=30)
    source = FileSource(flac, ring, realtime=False)  # the header is fine: it opens
    source.start()
    assert source.finished.wait(30)
    assert 0 < ring.total < len(load_audio(speech_wav))  # what came before the damage played
    assert "is damaged" in str(source.error) and str(flac) in str(source.error) and source.error.hint
