"""xreflect.data.sources.download against a local HTTP server: retries, resume, checksums, mirror, images."""
from __future__ import annotations

import hashlib
import socket

import pytest

from tests.support.fixtures.datasets import CORRUPT_IMAGE, image_bytes
from tests.support.fixtures.http_server import FixtureServer
from xreflect.data.sources.download import (ENV_MIRROR, ChecksumError, DownloadError, Settings, fetch_file,
                                    fetch_images)

BODY = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(BODY).hexdigest()
FAST = Settings(retries=3, backoff_s=0.01, timeout_s=5, image_timeout_s=5, workers=4, progress=False)


@pytest.fixture
def server():
    with FixtureServer() as running:
        yield running


def closed_port_url(path: str) -> str:
    with socket.socket() as sock:  # bind and release: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_download_verifies_and_rerun_downloads_nothing(server, tmp_path):
    url = server.add("/data.bin", BODY)
    first = fetch_file(url, tmp_path / "data.bin", FAST, sha256=SHA)
    assert first.downloaded and first.sha256 == SHA and (tmp_path / "data.bin").read_bytes() == BODY
    again = fetch_file(url, tmp_path / "data.bin", FAST, sha256=SHA)
    assert not again.downloaded and len(server.log) == 1


def test_server_failing_twice_then_succeeding(server, tmp_path):
    url = server.add("/flaky.bin", BODY, fail_first=2)
    fetched = fetch_file(url, tmp_path / "flaky.bin", FAST, sha256=SHA)
    assert fetched.downloaded and [status for _, _, status in server.log] == [503, 503, 200]


def test_retries_are_bounded(server, tmp_path):
    url = server.add("/down.bin", BODY, fail_first=10)
    with pytest.raises(DownloadError, match=r"HTTP 503.*gave up after 2 attempts"):
        fetch_file(url, tmp_path / "down.bin", Settings(retries=1, backoff_s=0.01, progress=False))
    assert len(server.log) == 2 and not (tmp_path / "down.bin").exists()


def test_truncated_transfer_resumes_with_range(server, tmp_path):
    url = server.add("/big.bin", BODY, truncate_first=1)
    fetched = fetch_file(url, tmp_path / "big.bin", FAST, sha256=SHA)
    assert fetched.sha256 == SHA
    (_, first_range, first_status), (_, second_range, second_status) = server.log
    assert (first_range, first_status) == (None, 200)
    assert (second_range, second_status) == (f"bytes={len(BODY) // 2}-", 206)


def test_truncated_transfer_restarts_when_server_ignores_range(server, tmp_path):
    url = server.add("/norange.bin", BODY, truncate_first=1, ranges=False)
    assert fetch_file(url, tmp_path / "norange.bin", FAST, sha256=SHA).sha256 == SHA
    assert [status for _, _, status in server.log] == [200, 200]


def test_interrupted_download_never_sits_under_final_name(server, tmp_path):
    url = server.add("/cut.bin", BODY, truncate_first=5)
    with pytest.raises(DownloadError, match="transfer ended early"):
        fetch_file(url, tmp_path / "cut.bin", Settings(retries=0, progress=False))
    assert not (tmp_path / "cut.bin").exists()
    assert (tmp_path / "cut.bin.part").stat().st_size == len(BODY) // 2  # kept for resuming


def test_checksum_mismatch_keeps_file_aside(server, tmp_path):
    url = server.add("/data.bin", BODY)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        fetch_file(url, tmp_path / "data.bin", FAST, sha256=wrong)
    message = str(err.value)
    assert f"expected {wrong}, got {SHA}" in message
    aside = tmp_path / f"data.bin.mismatch-{SHA[:12]}"
    assert aside.read_bytes() == BODY and str(aside) in message
    assert not (tmp_path / "data.bin").exists()


def test_md5_pin_is_checked_too(server, tmp_path):
    url = server.add("/data.bin", BODY)
    good = hashlib.md5(BODY).hexdigest()
    assert fetch_file(url, tmp_path / "a.bin", FAST, md5=good).sha256 == SHA
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        fetch_file(url, tmp_path / "b.bin", FAST, md5="f" * 32)


def test_unreachable_host_names_url_and_mirror_option(tmp_path):
    url = closed_port_url("/ml-1m.zip")
    settings = Settings.from_entry("movielens-1m", {"download": {"retries": 1, "backoff_s": 0.01}},
                                   progress=False)
    with pytest.raises(DownloadError) as err:
        fetch_file(url, tmp_path / "ml-1m.zip", settings)
    message = str(err.value)
    assert url in message and ENV_MIRROR in message and "datasets.movielens-1m.mirror_dir" in message


def test_next_url_is_tried_after_a_404(server, tmp_path):
    fetched = fetch_file([server.url("/missing.bin"), server.add("/data.bin", BODY)],
                         tmp_path / "data.bin", FAST, sha256=SHA)
    assert fetched.origin.endswith("/data.bin")
    assert [status for _, _, status in server.log] == [404, 200]  # a 404 is not retried


def test_per_file_timeout(server, tmp_path):
    url = server.add("/slow.bin", BODY, delay_s=1.5)
    with pytest.raises(DownloadError, match="timed out"):
        fetch_file(url, tmp_path / "slow.bin", Settings(retries=0, timeout_s=0.3, progress=False))


def test_mirror_directory_by_name_and_by_host_path(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "example.org" / "deep").mkdir(parents=True)
    (mirror / "by-name.bin").write_bytes(BODY)
    (mirror / "example.org" / "deep" / "by-path.bin").write_bytes(BODY[::-1])
    monkeypatch.setenv(ENV_MIRROR, str(mirror))
    settings = Settings.from_entry("x", {}, progress=False)
    assert fetch_file("http://unreachable.invalid/a/by-name.bin", tmp_path / "1.bin", settings,
                      sha256=SHA).origin == str(mirror / "by-name.bin")
    assert (tmp_path / "2.bin").exists() is False
    fetch_file("https://example.org/deep/by-path.bin", tmp_path / "2.bin", settings)
    assert (tmp_path / "2.bin").read_bytes() == BODY[::-1]


def test_images_first_usable_url_failures_remembered(server, tmp_path):
    good, png = image_bytes("JPEG"), image_bytes("PNG", (0, 90, 200))
    candidates = {
        "good": [server.add("/good.jpg", good)],
        "fallback": [server.url("/404.jpg"), server.add("/other.png", png)],
        "corrupt": [server.add("/corrupt.jpg", CORRUPT_IMAGE)],
        "flaky": [server.add("/flaky.jpg", good, fail_first=2)],
        "none": [],
        "shares-good": [server.url("/good.jpg")],  # same URL as "good": fetched once
    }
    results = fetch_images(candidates, tmp_path / "cache", FAST)
    assert results["good"].path.read_bytes() == good
    assert results["fallback"].url.endswith("/other.png") and results["fallback"].path.read_bytes() == png
    assert results["flaky"].path.read_bytes() == good
    assert results["corrupt"].path is None and "does not decode" in results["corrupt"].errors[0]
    assert "/corrupt.jpg" in results["corrupt"].errors[0]
    assert results["none"].path is None and results["none"].errors == []
    assert results["shares-good"].path == results["good"].path and len(server.requests_to("/good.jpg")) == 1
    requests = len(server.log)
    again = fetch_images(candidates, tmp_path / "cache", FAST)
    assert len(server.log) == requests  # successes cached, 404 and undecodable remembered
    assert again["corrupt"].errors == results["corrupt"].errors
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.part")) == []


def test_unresolvable_host_fails_fast_without_backoff(tmp_path):
    import time

    start = time.monotonic()
    with pytest.raises(DownloadError, match="unresolvable.invalid"):
        fetch_file("http://unresolvable.invalid/x.bin", tmp_path / "x.bin",
                   Settings(retries=3, backoff_s=5, progress=False))
    assert time.monotonic() - start < 5
