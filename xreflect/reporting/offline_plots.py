"""The HTML template that makes `dvc plots show` / `dvc plots diff` pages work offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so it is blank without a
network. Our template inlines the three libraries from docs/vendor/vega/ and leaves out DVC's
`{scripts}` placeholder (where DVC would put the CDN tags). .dvc/config points
`plots.html_template` at it, so plain `dvc plots show` uses it.

Refresh the vendored files (versions pinned in tools/package.json and tools/package-lock.json):

    npm ci --prefix tools && python -m xreflect.reporting.offline_plots --from-npm tools/node_modules
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from xreflect.core.errors import DataError
from xreflect.core.io import write_text

ROOT = Path(__file__).resolve().parents[2]
VENDOR_DIR = ROOT / "docs" / "vendor" / "vega"
TEMPLATE = ROOT / "docs" / "vendor" / "dvc_plots_template.html"
# Load order matters: vega-lite needs vega, vega-embed needs both.
LIBRARIES = [("vega", "build/vega.min.js"), ("vega-lite", "build/vega-lite.min.js"),
             ("vega-embed", "build/vega-embed.min.js")]
# A sourceMappingURL comment makes developer tools fetch a .map file that is not shipped.
SOURCE_MAP = re.compile(r"\n?//# sourceMappingURL=\S+\s*$")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC plots</title>
    <!-- Inlined so the page renders offline: {credits}.
         Licences and versions: docs/vendor/vega/ (refresh: python -m xreflect.reporting.offline_plots). -->
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def versions(vendor_dir: Path = VENDOR_DIR) -> dict:
    return json.loads((vendor_dir / "VERSIONS.json").read_text(encoding="utf-8"))


def inline_scripts(vendor_dir: Path = VENDOR_DIR) -> str:
    """<script> elements holding vega, vega-lite and vega-embed, for a page that must work offline."""
    info = versions(vendor_dir)
    scripts = []
    for name, _ in LIBRARIES:
        code = (vendor_dir / f"{name}.min.js").read_text(encoding="utf-8")
        # Inline code must not close its own <script> element, nor hold DVC's placeholders.
        for forbidden in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
            haystack = code.lower() if forbidden == "</script" else code
            if forbidden in haystack:
                raise DataError(f"{vendor_dir / (name + '.min.js')} contains {forbidden!r}; it cannot be "
                                 f"inlined into an HTML page as it is")
        scripts.append(f"    <script>/* {name} {info[name]['version']} ({info[name]['license']}) */\n{code}\n"
                       f"    </script>")
    return "\n".join(scripts)


def build_template(vendor_dir: Path = VENDOR_DIR) -> str:
    credits = ", ".join(f"{name} {versions(vendor_dir)[name]['version']}" for name, _ in LIBRARIES)
    return PAGE.format(credits=credits, scripts=inline_scripts(vendor_dir))


def vendor_from_npm(node_modules: Path, lock_file: Path, vendor_dir: Path = VENDOR_DIR) -> None:
    """Copy the built libraries and their licences out of an `npm ci` tree and record versions."""
    lock = json.loads(lock_file.read_text(encoding="utf-8"))["packages"]
    vendor_dir.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, built in LIBRARIES:
        package = node_modules / name
        meta = json.loads((package / "package.json").read_text(encoding="utf-8"))
        code = SOURCE_MAP.sub("\n", (package / built).read_text(encoding="utf-8"))
        write_text(vendor_dir / f"{name}.min.js", code)
        licence = vendor_dir / f"LICENSE-{name}"
        if (package / "LICENSE").exists():
            shutil.copyfile(package / "LICENSE", licence)
        elif not licence.exists():
            raise FileNotFoundError(f"{package} ships no LICENSE file; put the licence text of {name}'s "
                                    f"source repository in {licence} and run this again")
        info[name] = {"version": meta["version"], "license": meta["license"], "file": built,
                      "integrity": lock[f"node_modules/{name}"]["integrity"]}
    write_text(vendor_dir / "VERSIONS.json", json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the offline DVC plots template")
    parser.add_argument("--from-npm", type=Path, metavar="NODE_MODULES",
                        help="first copy the libraries from this node_modules (after `npm ci --prefix tools`)")
    args = parser.parse_args(argv)
    if args.from_npm:
        vendor_from_npm(args.from_npm, args.from_npm.parent / "package-lock.json")
    write_text(TEMPLATE, build_template())
    print(f"wrote {TEMPLATE.relative_to(ROOT)} ({TEMPLATE.stat().st_size // 1024} KiB): "
          + ", ".join(f"{k} {v['version']}" for k, v in versions().items()))


if __name__ == "__main__":
    main()
