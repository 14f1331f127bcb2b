"""The results pages as a reader sees them: headless Chromium, network off, every plot drawn.

Needs Debian's chromium (apt-get install -y chromium; .ci/run installs it) and Playwright from
requirements.txt; no browser is downloaded.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xreflect.reporting import gallery
from xreflect.reporting import offline_plots
from xreflect.reporting.page_check import check_page, chromium_path

ROOT = Path(__file__).resolve().parents[2]
needs_chromium = pytest.mark.skipif(chromium_path() is None,
                                    reason="chromium is not installed (apt-get install -y chromium)")


def test_committed_template_is_built_from_the_vendored_libraries():
    assert offline_plots.TEMPLATE.read_text(encoding="utf-8") == offline_plots.build_template()
    lock = json.loads((ROOT / "tools" / "package-lock.json").read_text())["packages"]
    for name, info in offline_plots.versions().items():
        assert lock[f"node_modules/{name}"]["version"] == info["version"]
        assert lock[f"node_modules/{name}"]["integrity"] == info["integrity"]
        assert (offline_plots.VENDOR_DIR / f"LICENSE-{name}").stat().st_size > 500
    config = (ROOT / ".dvc" / "config").read_text()
    configured = re.search(r"html_template\s*=\s*(\S+)", config).group(1)
    assert (ROOT / ".dvc" / configured).resolve() == offline_plots.TEMPLATE.resolve()


def test_a_library_that_would_close_its_script_element_is_refused(tmp_path):
    for name, _ in offline_plots.LIBRARIES:
        (tmp_path / f"{name}.min.js").write_text("var x = 1;")
    (tmp_path / "vega-lite.min.js").write_text("var s = '</SCRIPT>';")
    (tmp_path / "VERSIONS.json").write_text(json.dumps(
        {n: {"version": "1", "license": "BSD-3-Clause"} for n, _ in offline_plots.LIBRARIES}))
    with pytest.raises(ValueError, match="vega-lite.min.js contains '</script'"):
        offline_plots.build_template(tmp_path)


def dvc(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True,
                          text=True)


def plot_count(page: Path) -> int:
    return len(re.findall(r'<div id = "', page.read_text(encoding="utf-8")))


@needs_chromium
@pytest.mark.parametrize("command", [["plots", "show"], ["plots", "diff", "HEAD"]])
def test_dvc_plots_pages_draw_every_plot_offline(tmp_path, command):
    dvc(*command, "-o", str(tmp_path / "page"))
    page = tmp_path / "page" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text(encoding="utf-8")
    expected = plot_count(page)
    assert expected >= 1
    report = check_page(page, expected)
    assert len(report.plots) == expected
    assert report.blank_plots == [] and all(p["drawn"] > 100 for p in report.plots)
    assert report.refused == [] and report.errors == []


@needs_chromium
def test_dvcs_default_page_is_blank_offline(tmp_path):
    """The control: with DVC's own template (vega from a CDN) nothing is drawn without a network."""
    from dvc_render.html import PAGE_HTML
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    template = tmp_path / "cdn_template.html"
    template.write_text(PAGE_HTML)
    dvc("plots", "show", "--html-template", str(template), "-o", str(tmp_path / "page"))
    with pytest.raises(PlaywrightTimeout):
        check_page(tmp_path / "page" / "index.html", 1, timeout_ms=4000)


@needs_chromium
def test_gallery_draws_its_chart_and_images_offline(tmp_path):
    from tests.reporting.test_gallery import PARAMS, make_fixture

    out = tmp_path / "gallery.html"
    gallery.build_gallery(PARAMS, 3, 0, out, tmp_path / "w.json", **make_fixture(tmp_path))
    report = check_page(out, 1)
    assert [p["kind"] for p in report.plots] == ["svg"] and report.blank_plots == []
    # 3 sampled items; the one without an image shows "no image" instead of an <img>.
    assert 2 <= len(report.images) <= 3 and all(i["complete"] and i["width"] == 64 for i in report.images)
    assert report.refused == [] and report.errors == []
