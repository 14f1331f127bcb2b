"""The stand-in's image analyses are kept across processes, and only for the code that made them."""
from __future__ import annotations

import pytest

from tests.backends.test_offline_backend import png
from xreflect.backends import analysis_cache
from xreflect.data.image_analysis import analyse_image


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path))
    return tmp_path / analysis_cache.CACHE_FILE


def test_a_cached_analysis_is_the_analysis_and_is_read_back_without_analysing(cache, monkeypatch):
    image = png("white", "blue")
    first = analysis_cache.cached_analysis(image)
    assert first == analyse_image(image) and cache.exists()

    def no_analysis(_):
        raise AssertionError("analysed again")
    monkeypatch.setattr(analysis_cache, "analyse_image", no_analysis)
    assert analysis_cache.cached_analysis(image) == first
    with pytest.raises(AssertionError, match="analysed again"):  # other bytes are analysed
        analysis_cache.cached_analysis(png("black", "red", "square"))


def test_changed_analysis_code_does_not_reuse_old_analyses(cache, monkeypatch):
    image = png("white", "blue")
    analysis_cache.cached_analysis(image)
    monkeypatch.setattr(analysis_cache, "_code_key", lambda: b"other code")
    calls = []
    monkeypatch.setattr(analysis_cache, "analyse_image", lambda data: calls.append(data) or analyse_image(data))
    analysis_cache.cached_analysis(image)
    assert calls == [image]


def test_an_undecodable_image_is_an_error_and_is_not_cached(cache):
    with pytest.raises(ValueError, match="cannot decode image"):
        analysis_cache.cached_analysis(b"not an image")
    with pytest.raises(ValueError, match="cannot decode image"):
        analysis_cache.cached_analysis(b"not an image")
