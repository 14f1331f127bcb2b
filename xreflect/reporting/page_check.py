"""Open a results page in headless Chromium with the network off and report what was drawn.

    python -m xreflect.reporting.page_check PAGE.html [--screenshot docs/page.png]

Uses Debian's `chromium` (apt-get install -y chromium) through Playwright, with no browser download.
Every request other than file: and data: URLs is refused and recorded, so a page that needs the
network shows up as blank plots plus a list of refused URLs. A vega plot counts as drawn when its
SVG has marks or its canvas has non-background pixels.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# For each vega-embed container: which renderer, and how much it drew.
DRAWN_JS = """() => [...document.querySelectorAll('.vega-embed')].map(el => {
  const svg = el.querySelector('svg.marks');
  const canvas = el.querySelector('canvas.marks');
  if (svg) {
    return {id: el.id, kind: 'svg', drawn: svg.querySelectorAll('path, line, rect, circle, text').length};
  }
  if (canvas && canvas.width && canvas.height) {
    const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let drawn = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 0 && (d[i] < 245 || d[i + 1] < 245 || d[i + 2] < 245)) drawn++;
    }
    return {id: el.id, kind: 'canvas', drawn: drawn};
  }
  return {id: el.id, kind: null, drawn: 0};
})"""

IMAGES_JS = "() => [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth}))"


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageReport:
    plots: list[dict]
    images: list[dict]
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def blank_plots(self) -> list[str]:
        return [p["id"] or "?" for p in self.plots if p["drawn"] == 0]


def check_page(page_path: Path, expect_plots: int, screenshot: Path | None = None,
               timeout_ms: int = 30000, full_page: bool = False) -> PageReport:
    """Load `page_path` offline, wait until `expect_plots` vega views exist, and measure them."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("chromium not found on PATH; install Debian's package: apt-get install -y chromium")
    refused, errors = [], []

    def route(request_route):
        url = request_route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            request_route.continue_()
        else:
            refused.append(url)
            request_route.abort()

    with tempfile.TemporaryDirectory(prefix="xreflect-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=executable, args=CHROMIUM_FLAGS, offline=True,
            viewport={"width": 1280, "height": 900})
        try:
            context.route("**/*", route)
            page = context.new_page()
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(Path(page_path).resolve().as_uri())
            page.wait_for_function(f"document.querySelectorAll('.vega-embed .marks').length >= {expect_plots}",
                                   timeout=timeout_ms)
            page.wait_for_timeout(300)  # let the last view finish painting its canvas
            report = PageReport(page.evaluate(DRAWN_JS), page.evaluate(IMAGES_JS), refused, errors)
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=full_page)
        finally:
            context.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--plots", type=int, default=1, help="how many vega plots the page must draw")
    parser.add_argument("--screenshot", type=Path, help="save what the browser shows (the first screen)")
    parser.add_argument("--full-page", action="store_true", help="screenshot the whole page")
    args = parser.parse_args(argv)
    report = check_page(args.page, args.plots, args.screenshot, full_page=args.full_page)
    for plot in report.plots:
        print(f"plot {plot['id'] or '?'}: {plot['kind']}, {plot['drawn']} drawn")
    print(f"images: {sum(1 for i in report.images if i['width'] > 0)} of {len(report.images)} decoded; "
          f"refused requests: {report.refused or 'none'}; page errors: {report.errors or 'none'}")
    ok = not report.blank_plots and not report.refused and not report.errors and len(report.plots) >= args.plots
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
