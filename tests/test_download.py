"""download(): resume, refusal of wrong files, timeouts, fallbacks, offline, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from helpers import Serve, Stall, Status, closed_port_url

from avatar_cam.errors import DownloadError
from avatar_cam.wav2lip.checkpoint import validate_checkpoint
from avatar_cam.weights.download import download

# --- a local server whose misbehaviour each test chooses ----------------------------------------------




@pytest.fixture(scope="session")
def checkpoint_bytes(random_checkpoint: Path) -> bytes:
    return random_checkpoint.read_bytes()


def sha256(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def sha_validator(expected: bytes):
    """For small payloads: accept exactly `expected` (a checkpoint validator would reject any small file)."""

    def validate(path: Path) -> None:
        if path.read_bytes() != expected:
            raise ValueError("content differs from the expected file")

    return validate


def assert_nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()
    assert not dest.with_name(dest.name + ".part.json").exists()


# --- resume ---------------------------------------------------------------------------------------------


def test_a_cut_transfer_resumes_with_a_range_request(server, tmp_path, checkpoint_bytes):
    half = len(checkpoint_bytes) // 2
    server.routes["/w.pth"] = Serve(checkpoint_bytes, cut_at=[half])
    dest = server.watch = tmp_path / "models" / "wav2lip_gan.pth"

    url = download([server.url("/w.pth")], dest, validate=validate_checkpoint, progress=False)

    assert url == server.url("/w.pth")
    first, second = server.requests
    assert first.range is None
    assert second.range == f"bytes={half}-"  # resumed where the cut left it, not from zero
    assert second.dest_existed is False and second.part_size == half  # only the .part existed after the cut
    assert sha256(dest) == sha256(checkpoint_bytes)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["wav2lip_gan.pth"]


def test_an_interrupted_run_leaves_only_the_part_and_the_next_run_resumes_it(server, tmp_path, checkpoint_bytes):
    half = len(checkpoint_bytes) // 2
    # The first run's transfer is cut half way and its immediate resume gets nothing: that run fails.
    server.routes["/w.pth"] = Serve(checkpoint_bytes, cut_at=[half, half])
    dest = tmp_path / "wav2lip_gan.pth"
    part = tmp_path / "wav2lip_gan.pth.part"

    with pytest.raises(DownloadError, match="connection closed after"):
        download([server.url("/w.pth")], dest, validate=validate_checkpoint, progress=False)
    assert not dest.exists()
    assert part.stat().st_size == half

    server.requests.clear()
    download([server.url("/w.pth")], dest, validate=validate_checkpoint, progress=False)
    assert [r.range for r in server.requests] == [f"bytes={half}-"]
    assert sha256(dest) == sha256(checkpoint_bytes)
    assert not part.exists()


def test_a_server_that_ignores_range_restarts_from_zero(server, tmp_path):
    body = bytes(range(256)) * 4000
    route = server.routes["/f"] = Serve(body, cut_at=[1000, 1000])
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError):
        download([server.url("/f")], dest, validate=sha_validator(body), progress=False)
    route.honour_range = False
    server.requests.clear()

    download([server.url("/f")], dest, validate=sha_validator(body), progress=False)
    assert server.requests[0].range == "bytes=1000-"  # asked to resume, got a 200 with the whole file
    assert dest.read_bytes() == body


def test_a_complete_part_left_before_validation_is_installed_without_downloading_again(server, tmp_path):
    body = b"0123456789" * 5000
    server.routes["/f"] = Serve(body)
    dest = tmp_path / "f.bin"

    def interrupted(path):
        raise KeyboardInterrupt  # the user pressed Ctrl-C while the file was being checked

    with pytest.raises(KeyboardInterrupt):
        download([server.url("/f")], dest, validate=interrupted, progress=False)
    assert not dest.exists()
    server.requests.clear()

    download([server.url("/f")], dest, validate=sha_validator(body), progress=False)
    assert [r.range for r in server.requests] == [f"bytes={len(body)}-"]  # answered 416: nothing more to send
    assert dest.read_bytes() == body


def test_a_stale_part_answered_with_416_starts_over(server, tmp_path):
    old, new = b"a" * 60_000, b"b" * 20_000
    route = server.routes["/f"] = Serve(old, cut_at=[30_000, 30_000])
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError):
        download([server.url("/f")], dest, progress=False)
    route.body = new  # the file on the server changed and is now shorter than our part
    server.requests.clear()

    download([server.url("/f")], dest, validate=sha_validator(new), progress=False)
    assert [r.range for r in server.requests] == ["bytes=30000-", None]
    assert dest.read_bytes() == new


def test_a_part_from_another_mirror_is_not_resumed(server, tmp_path):
    body = bytes(range(256)) * 400
    server.routes["/a"] = Serve(b"x" * len(body), cut_at=[5000, 5000])
    server.routes["/b"] = Serve(body)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError):
        download([server.url("/a")], dest, progress=False)
    server.requests.clear()

    download([server.url("/b")], dest, validate=sha_validator(body), progress=False)
    assert [r.range for r in server.requests] == [None]
    assert dest.read_bytes() == body


def test_a_source_that_fails_before_sending_leaves_the_part_of_another(server, tmp_path):
    body = bytes(range(256)) * 400
    server.routes["/a"] = Serve(body, cut_at=[5000, 5000])
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError):
        download([server.url("/a")], dest, progress=False)
    server.routes["/html"] = Serve(b"<!doctype html><p>moved</p>", content_type="application/octet-stream")
    server.requests.clear()

    download([server.url("/missing"), server.url("/html"), server.url("/a")], dest, validate=sha_validator(body), progress=False)
    assert [(r.path, r.range) for r in server.requests] == [("/missing", None), ("/html", None), ("/a", "bytes=5000-")]
    assert dest.read_bytes() == body


# --- wrong content --------------------------------------------------------------------------------------


def test_a_file_that_is_not_a_checkpoint_is_refused_and_removed(server, tmp_path):
    server.routes["/w.pth"] = Serve(bytes(range(256)) * 4096)  # valid HTTP, 1 MB of the wrong thing
    dest = tmp_path / "wav2lip_gan.pth"
    with pytest.raises(DownloadError) as err:
        download([server.url("/w.pth")], dest, validate=validate_checkpoint, progress=False)
    message = str(err.value)
    assert "not valid" in message and "checkpoint" in message
    assert server.url("/w.pth") in message
    assert_nothing_left(dest)


@pytest.mark.parametrize("content_type, body", [
    ("text/html; charset=utf-8", b"<html><body>Sign in to your account</body></html>"),
    ("text/html", b"Sign in to continue"),  # labelled as a page, whatever the body looks like
    ("application/octet-stream", b"\n<!DOCTYPE html><html><body>Sign in</body></html>"),  # mislabelled
])
def test_a_web_page_instead_of_the_file_is_refused(server, tmp_path, content_type, body):
    server.routes["/w.pth"] = Serve(body, content_type=content_type)
    dest = tmp_path / "wav2lip_gan.pth"
    with pytest.raises(DownloadError, match="the server sent a web page instead of the file"):
        download([server.url("/w.pth")], dest, validate=validate_checkpoint, progress=False)
    assert_nothing_left(dest)


def test_a_wrong_size_is_refused_before_downloading(server, tmp_path):
    server.routes["/f"] = Serve(b"z" * 10_000)
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="10,000 bytes, but 12,345 are expected"):
        download([server.url("/f")], dest, expected_size=12_345, progress=False)
    assert not dest.exists()
    assert not dest.with_name("f.bin.part").exists()


# --- timeouts, errors, offline --------------------------------------------------------------------------


def test_a_server_that_never_answers_times_out(server, tmp_path):
    server.routes["/w.pth"] = Stall()
    dest = tmp_path / "wav2lip_gan.pth"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download([server.url("/w.pth")], dest, timeout=1, progress=False)
    assert time.monotonic() - t0 < 5
    assert "timed out after 1 s" in str(err.value)
    assert server.url("/w.pth") in str(err.value)
    assert_nothing_left(dest)


def test_a_transfer_that_stalls_half_way_times_out_and_keeps_the_part(server, tmp_path):
    server.routes["/w.pth"] = Stall(after_headers=b"q" * 50_000, total=100_000)
    dest = tmp_path / "wav2lip_gan.pth"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="timed out after 1 s"):
        download([server.url("/w.pth")], dest, timeout=1, progress=False)
    assert time.monotonic() - t0 < 6
    assert [r.range for r in server.requests] == [None, "bytes=50000-"]  # one resume, which stalled too
    assert not dest.exists()
    assert dest.with_name(dest.name + ".part").stat().st_size == 50_000  # kept for the next run


def test_a_server_error_moves_on_to_the_next_url(server, tmp_path, checkpoint_bytes):
    server.routes["/broken"] = Status(500, b"Internal Server Error")
    server.routes["/w.pth"] = Serve(checkpoint_bytes)
    dest = tmp_path / "wav2lip_gan.pth"

    url = download([server.url("/broken"), server.url("/w.pth")], dest, validate=validate_checkpoint, progress=False)
    assert url == server.url("/w.pth")
    assert [r.path for r in server.requests] == ["/broken", "/w.pth"]
    assert sha256(dest) == sha256(checkpoint_bytes)


def test_when_every_url_fails_the_error_lists_each_one_and_the_manual_way(server, tmp_path):
    server.routes["/a"] = Status(500)
    dest = tmp_path / "wav2lip_gan.pth"
    urls = [server.url("/a"), server.url("/missing")]
    with pytest.raises(DownloadError) as err:
        download(urls, dest, progress=False)
    message = str(err.value)
    assert "HTTP 500" in message and "HTTP 404" in message
    assert all(u in message for u in urls)
    assert "avatar-cam models import PATH" in err.value.hint and "browser" in err.value.hint
    assert_nothing_left(dest)


def test_no_network_says_offline_and_gives_the_manual_way(tmp_path):
    dest = tmp_path / "wav2lip_gan.pth"
    with pytest.raises(DownloadError) as err:
        download([closed_port_url(), closed_port_url()], dest, timeout=2, progress=False)
    assert "offline or the hosts are unreachable" in str(err.value)
    assert "avatar-cam models import PATH" in err.value.hint
    assert_nothing_left(dest)


# --- what may be downloaded -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://example.com/wav2lip_gan.pth", "ftp://example.com/w.pth", "file:///etc/passwd"])
def test_only_https_is_allowed(tmp_path, url):
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match="only https:// addresses are allowed"):
        download([url], dest, progress=False)
    assert_nothing_left(dest)


def test_a_redirect_to_plain_http_is_refused(server, tmp_path):
    server.routes["/w.pth"] = Status(302, b"", {"Location": "http://example.com/wav2lip_gan.pth"})
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError, match="redirected to a non-HTTPS address"):
        download([server.url("/w.pth")], dest, progress=False)
    assert_nothing_left(dest)


def test_redirects_to_allowed_addresses_are_followed(server, tmp_path):
    body = b"payload" * 1000
    server.routes["/old"] = Status(302, b"", {"Location": server.url("/new")})
    server.routes["/new"] = Serve(body)
    dest = tmp_path / "f.bin"
    download([server.url("/old")], dest, validate=sha_validator(body), progress=False)
    assert dest.read_bytes() == body
