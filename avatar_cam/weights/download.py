"""Download one large file from a list of mirrors: resumable, validated, and never half-written in place.

`download(urls, dest)` tries each URL in order and streams into `<dest>.part`. A transfer cut short is
resumed with an HTTP Range request (at once, a few times, and again on the next run: the `.part` stays).
Only a complete file that passes the size check and `validate` is moved onto `dest`, with `os.replace`, so
`dest` is either absent, the previous file, or the new valid one.

Which `.part` may be resumed: `<dest>.part.json` records the URL it came from (and the server's ETag or
Last-Modified, sent back as If-Range). A part from another mirror is not resumed, since mirrors hold
different copies; it is overwritten only once another source actually starts sending.

Standard library only (urllib) plus tqdm. Real sources must be HTTPS; plain http is allowed only to
127.0.0.1/localhost, which the tests use. Every failure ends in one `DownloadError` that lists each URL
and why it failed, with the manual alternative as its hint.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from avatar_cam import __version__
from avatar_cam.errors import AvatarCamError, DownloadError

USER_AGENT = f"avatar-cam/{__version__} (+https://pypi.org/project/avatar-cam/) Python-urllib"
CHUNK = 1 << 20
RESUME_ATTEMPTS = 3  # per URL, in one call; each must have received some bytes to earn the next
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

# Failure kinds: all "unreachable" means the machine is offline (or a firewall blocks every host).
UNREACHABLE, TIMEOUT, HTTP, CONTENT, CUT, NETWORK, REFUSED = "unreachable", "timeout", "http", "content", "cut", "network", "refused"


class _SourceFailed(Exception):
    """One URL failed. `retry`: another attempt at the same URL is worth it (this one got some bytes first)."""

    def __init__(self, reason: str, kind: str, retry: bool = False):
        super().__init__(reason)
        self.reason, self.kind, self.retry = reason, kind, retry


_WEB_PAGE = "the server sent a web page instead of the file (the link may need a sign-in, or it has moved)"


class _InsecureRedirect(urllib.error.URLError):
    pass


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (mirrors send you to a CDN), but never from HTTPS down to plain http or another scheme."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not _allowed_url(newurl):
            raise _InsecureRedirect(f"redirected to a non-HTTPS address ({newurl})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _allowed_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS)


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers: list = [_SafeRedirects()]
    if (urlsplit(url).hostname or "") in LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))  # a proxy from the environment must not see local tests
    return urllib.request.build_opener(*handlers)


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _size_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def download(
    urls: Iterable[str],
    dest: str | Path,
    *,
    expected_size: int | None = None,
    validate: Callable[[Path], None] | None = None,
    timeout: float = 20.0,
    progress: bool = True,
) -> str:
    """Fetch `dest` from the first URL that delivers a valid file; return that URL.

    `validate(path)` raises (an AvatarCamError or ValueError) when the file is not what was asked for; the
    file is then deleted and the next URL tried. `timeout` applies to connecting and to each read, not to
    the whole transfer. `progress` prints one line per source tried and a progress bar (the bar only when
    stderr is a terminal). Raises DownloadError when no URL works.
    """
    urls = list(urls)
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if not urls:
        raise DownloadError(f"no download address for {dest.name}", hint=_manual_hint(dest.name))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the folder {dest.parent}: {exc.strerror}") from None
    failures: list[tuple[str, _SourceFailed]] = []
    for i, url in enumerate(urls, 1):
        _say(progress, f"Downloading {dest.name} from {url}" + (f" (source {i} of {len(urls)})" if len(urls) > 1 else ""))
        try:
            if not _allowed_url(url):
                raise _SourceFailed("refused: only https:// addresses are allowed", REFUSED)
            _fetch_with_resume(url, part, expected_size=expected_size, timeout=timeout, progress=progress)
            _install(part, dest, expected_size=expected_size, validate=validate)
            return url
        except _SourceFailed as failure:
            failures.append((url, failure))
            _say(progress, f"  failed: {failure.reason}" + ("; trying the next source" if i < len(urls) else ""))
    raise _all_failed(dest.name, failures, timeout)


def _fetch_with_resume(url: str, part: Path, *, expected_size: int | None, timeout: float, progress: bool) -> None:
    resumes = 0
    while True:
        try:
            _transfer(url, part, expected_size=expected_size, timeout=timeout, progress=progress)
            return
        except _SourceFailed as failure:
            if not (failure.retry and resumes < RESUME_ATTEMPTS):
                raise
            resumes += 1
            _say(progress, f"  {failure.reason}; resuming")


def _transfer(url: str, part: Path, *, expected_size: int | None, timeout: float, progress: bool) -> None:
    """Bring `part` to the complete file from `url`, resuming it if it came from this URL. Raises _SourceFailed."""
    offset, validator = _resumable_offset(part, url)
    resp = _open(url, offset, validator, timeout)
    if resp is None:  # 416: the part already holds the whole file
        return
    with resp:
        offset, total = _check_response(resp, offset, part)
        if expected_size is not None and total is not None and total != expected_size:
            raise _SourceFailed(f"the server offers {total:,} bytes, but {expected_size:,} are expected", CONTENT)
        received = _stream(resp, part, url, offset, total, timeout, progress)
    if total is not None and received < total:
        raise _SourceFailed(
            f"the connection closed after {_size_text(received)} of {_size_text(total)}", CUT, retry=received > offset
        )


def _resumable_offset(part: Path, url: str) -> tuple[int, str | None]:
    try:
        size = part.stat().st_size
        source = json.loads(_source_file(part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0, None
    if not isinstance(source, dict) or source.get("url") != url or size == 0:
        return 0, None
    return size, source.get("validator")


def _source_file(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _write_source(part: Path, url: str, headers) -> None:
    etag = headers.get("ETag")
    validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
    try:
        _source_file(part).write_text(json.dumps({"url": url, "validator": validator}), encoding="utf-8")
    except OSError as exc:
        raise DownloadError(f"cannot write to {part.parent}: {exc.strerror}") from None


def _discard(part: Path) -> None:
    for path in (part, _source_file(part)):
        path.unlink(missing_ok=True)


def _open(url: str, offset: int, validator: str | None, timeout: float):
    """Send the request; return the response, or None when a 416 says the part is already complete."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
        if validator:
            req.add_header("If-Range", validator)
    try:
        return _opener(url).open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:
                # Range past the end: either the part is complete (a run stopped before validating it) or
                # the file changed. Content-Range says which; if unsure, start over.
                if _content_range(exc.headers.get("Content-Range"))[2] == offset:
                    return None
                return _open(url, 0, None, timeout)
            raise _SourceFailed(f"HTTP {exc.code} {exc.reason}".rstrip(), HTTP) from None
    except urllib.error.URLError as exc:
        raise _classify(exc.reason, url, timeout) from None
    except (http.client.HTTPException, OSError) as exc:
        raise _classify(exc, url, timeout) from None


def _check_response(resp, offset: int, part: Path) -> tuple[int, int | None]:
    """Reject web pages; work out where the body starts and the file's total size. Returns (offset, total)."""
    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype in ("text/html", "application/xhtml+xml"):
        raise _SourceFailed(_WEB_PAGE, CONTENT)
    length = resp.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if resp.status == 206:
        start, _end, total = _content_range(resp.headers.get("Content-Range"))
        if start == offset:
            return offset, total if total is not None else (offset + length if length is not None else None)
        _discard(part)  # a range we did not ask for: start over
        raise _SourceFailed(f"the server resumed at byte {start}, not {offset}", NETWORK, retry=True)
    return 0, length  # 200: the whole file, whether or not we asked for a range


def _looks_like_html(head: bytes) -> bool:
    """Some servers label their login or error pages application/octet-stream."""
    head = head.lstrip()[:16].lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """`bytes START-END/TOTAL` or `bytes */TOTAL` -> (start, end, total), None where absent or unreadable."""
    try:
        unit, _, spec = (value or "").strip().partition(" ")
        span, _, total = spec.partition("/")
        if unit != "bytes":
            return None, None, None
        start, _, end = span.partition("-")
        return (int(start) if start != "*" else None, int(end) if end else None, int(total) if total.isdigit() else None)
    except ValueError:
        return None, None, None


def _stream(resp, part: Path, url: str, offset: int, total: int | None, timeout: float, progress: bool) -> int:
    """Append the body to `part`, or replace the part when offset is 0. Returns the part's size afterwards.

    The part is opened only once the first bytes are in and are not a web page, so a source that fails
    before sending anything leaves an earlier part (perhaps another mirror's) as it was.
    """
    received = offset
    f = None
    bar = tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1000, desc=part.name[: -len(".part")],
        file=sys.stderr, disable=None if progress else True, leave=False, dynamic_ncols=True,
    )
    try:
        while True:
            try:
                chunk = resp.read1(CHUNK)  # whatever has arrived: a stall must not swallow a buffered MB
            except TimeoutError:
                got = f" ({_size_text(received)} received)" if received else ""
                raise _SourceFailed(f"timed out after {timeout:g} s without data{got}", TIMEOUT, retry=received > offset) from None
            except (http.client.HTTPException, OSError) as exc:
                raise _SourceFailed(f"the connection broke after {_size_text(received)} ({exc})", CUT, retry=received > offset) from None
            if not chunk:
                break
            if f is None:
                if offset == 0 and _looks_like_html(chunk):
                    raise _SourceFailed(_WEB_PAGE, CONTENT)
                f = _open_part(part, url, resp.headers, offset)
            try:
                f.write(chunk)
            except OSError as exc:
                raise DownloadError(f"cannot write {part}: {exc.strerror}", hint="free some disk space and run the command again") from None
            received += len(chunk)
            bar.update(len(chunk))
        if f is None and offset == 0:
            raise _SourceFailed("the server sent an empty file", CONTENT)
        if f is not None:
            f.flush()
            os.fsync(f.fileno())
    finally:
        if f is not None:
            f.close()
        bar.close()
    return received


def _open_part(part: Path, url: str, headers, offset: int):
    """Open the part to append at `offset`; or, at 0, truncate it and then record that it comes from `url`."""
    try:
        f = open(part, "ab" if offset else "wb")  # noqa: SIM115 - _stream closes it
    except OSError as exc:
        raise DownloadError(f"cannot write {part}: {exc.strerror}") from None
    if offset == 0:
        try:
            _write_source(part, url, headers)
        except BaseException:
            f.close()
            raise
    return f


def _install(part: Path, dest: Path, *, expected_size: int | None, validate: Callable[[Path], None] | None) -> None:
    """Check the complete part and move it onto dest; a part that fails is deleted (it cannot be resumed into a valid file)."""
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        _discard(part)
        raise _SourceFailed(f"the file is {size:,} bytes, but {expected_size:,} are expected", CONTENT)
    if validate is not None:
        try:
            validate(part)
        except (AvatarCamError, ValueError) as exc:
            _discard(part)
            raise _SourceFailed(f"the file arrived but is not valid: {exc.args[0] if exc.args else exc}", CONTENT) from None
    os.replace(part, dest)
    _discard(part)  # the source record


def _classify(reason: object, url: str, timeout: float) -> _SourceFailed:
    """Turn a connection-level error into a failure a person can read."""
    host = urlsplit(url).hostname or url
    if isinstance(reason, _InsecureRedirect):
        return _SourceFailed(f"refused: {reason.reason}", REFUSED)
    if isinstance(reason, TimeoutError):
        return _SourceFailed(f"timed out after {timeout:g} s waiting for {host}", TIMEOUT)
    if isinstance(reason, socket.gaierror):
        return _SourceFailed(f"cannot look up the host {host} ({reason.strerror})", UNREACHABLE)
    if isinstance(reason, ConnectionRefusedError):
        return _SourceFailed(f"{host} refused the connection", UNREACHABLE)
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
        return _SourceFailed(f"no route to {host} ({reason.strerror})", UNREACHABLE)
    if isinstance(reason, ssl.SSLError):
        return _SourceFailed(f"secure connection to {host} failed ({getattr(reason, 'reason', None) or reason})", NETWORK)
    if isinstance(reason, http.client.RemoteDisconnected):
        return _SourceFailed(f"{host} closed the connection without answering", NETWORK)
    return _SourceFailed(f"network error talking to {host}: {reason}", NETWORK)


def _manual_hint(file_name: str) -> str:
    return f"download {file_name} in a web browser from one of the addresses above, then run: avatar-cam models import PATH"


def _all_failed(file_name: str, failures: list[tuple[str, _SourceFailed]], timeout: float) -> DownloadError:
    kinds = {f.kind for _, f in failures}
    if kinds == {UNREACHABLE}:
        headline = f"cannot download {file_name}: offline or the hosts are unreachable"
        hint = "check the internet connection (and HTTPS_PROXY if you need a proxy); or " + _manual_hint(file_name)
    elif kinds == {TIMEOUT}:
        headline = f"cannot download {file_name}: every source timed out after {timeout:g} s"
        hint = "try again later, or " + _manual_hint(file_name)
    else:
        headline = f"cannot download {file_name}" + (f" from any of its {len(failures)} sources" if len(failures) > 1 else "")
        hint = _manual_hint(file_name)
    lines = [headline] + [f"  {url}\n    {failure.reason}" for url, failure in failures]
    return DownloadError("\n".join(lines), hint=hint)
