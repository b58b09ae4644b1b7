"""The Vega libraries, inlined: one HTML template that renders every plot with no network.

``plots_template.html`` (beside this file) is DVC's ``plots.html_template``: vega 5.20.2, vega-lite 5.2.0
and vega-embed 6.18.2 -- the versions DVC's own page asks its CDN for -- inlined with their licence texts,
and the ``{plot_divs}`` placeholder DVC fills. It has no ``{scripts}`` placeholder on purpose: that is where
DVC would put its CDN ``<script src=...>`` tags. The report page (:mod:`evolforge.report.page`) inlines the
same libraries, read from the same file (:func:`library_scripts`), so the two pages draw alike.

The template is built from the npm packages, checked against their sha256, with::

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python -m evolforge.report.assets vega-5.20.2.tgz vega-lite-5.2.0.tgz vega-embed-6.18.2.tgz
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

TEMPLATE = Path(__file__).with_name("plots_template.html")

# (package, version, file inside the tarball, sha256 of the npm tarball)
LIBRARIES = [
    ("vega", "5.20.2", "package/build/vega.min.js", "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d"),
    ("vega-lite", "5.2.0", "package/build/vega-lite.min.js",
     "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b"),
    ("vega-embed", "6.18.2", "package/build/vega-embed.min.js",
     "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b"),
]
# What each minified build bundles besides its own code, so the licence header is complete.
BUNDLED = {
    "vega": "d3-array, d3-color, d3-dispatch, d3-dsv, d3-force, d3-format, d3-geo, d3-hierarchy, d3-interpolate, "
            "d3-geo-projection, d3-path, d3-quadtree, d3-scale, d3-shape, d3-time, d3-time-format, "
            "d3-timer, d3-delaunay, "
            "delaunator (ISC or BSD-3-Clause, Copyright Mike Bostock and contributors); topojson-client (ISC); "
            "the vega-* modules (BSD-3-Clause, University of Washington Interactive Data Lab)",
    "vega-lite": "clone (MIT), fast-deep-equal (MIT), fast-json-stable-stringify (MIT), "
                 "json-stringify-pretty-compact (MIT), "
                 "array-flat-polyfill (CC0-1.0), tslib (0BSD)",
    "vega-embed": "fast-json-patch (MIT), json-stringify-pretty-compact (MIT), semver (ISC), vega-themes "
                  "(BSD-3-Clause), "
                  "vega-tooltip (BSD-3-Clause), vega-schema-url-parser (BSD-3-Clause), vega-util "
                  "(BSD-3-Clause), tslib (0BSD)",
}
BEGIN, END = "<!-- vega libraries: begin -->", "<!-- vega libraries: end -->"

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>evolforge plots</title>
%(begin)s
%(scripts)s
%(end)s
<style>
  body { font-family: system-ui, sans-serif; margin: 1rem 2rem; }
  body > div { display: inline-block; vertical-align: top; margin: 0 1.5rem 1.5rem 0; }
  .vega-embed { max-width: 100%%; }
</style>
</head>
<body>
<h1>evolforge plots</h1>
{plot_divs}
</body>
</html>
"""


def _script(name: str, version: str, js: str, licence: str) -> str:
    if "</script" in js.lower():
        raise ValueError(f"{name} {version}: the build contains '</script', which would end the inline script early")
    # The source map comment would make developer tools fetch a .map file: drop it.
    js = "\n".join(line for line in js.rstrip().splitlines() if not line.startswith("//# sourceMappingURL="))
    header = (f"/*! {name} {version} (npm), inlined for offline use.\n{licence.strip()}\n\n"
              f"This build also bundles: {BUNDLED[name]}. */")
    return f'<script data-library="{name}@{version}">\n{header}\n{js}\n</script>'


def build_template(tarballs: list[str | Path]) -> str:
    """The template's text from the three npm tarballs (any order); each must match its pinned sha256."""
    by_name = {}
    for path in map(Path, tarballs):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        match = [lib for lib in LIBRARIES if lib[3] == digest]
        if not match:
            raise ValueError(f"{path}: sha256 {digest} is none of the pinned packages "
                             f"{[f'{n}@{v}' for n, v, _, _ in LIBRARIES]}")
        by_name[match[0][0]] = path
    scripts = []
    for name, version, member, _ in LIBRARIES:
        if name not in by_name:
            raise ValueError(f"missing the npm tarball of {name}@{version} (npm pack {name}@{version})")
        with tarfile.open(by_name[name]) as tar:
            js = tar.extractfile(member).read().decode("utf-8")
            licence = tar.extractfile("package/LICENSE").read().decode("utf-8")
        scripts.append(_script(name, version, js, licence))
    return PAGE % {"begin": BEGIN, "end": END, "scripts": "\n".join(scripts)}


def library_scripts() -> str:
    """The three inline ``<script>`` elements of the shipped template, for pages of our own."""
    text = TEMPLATE.read_text(encoding="utf-8")
    return text[text.index(BEGIN): text.index(END) + len(END)]


if __name__ == "__main__":
    TEMPLATE.write_text(build_template(sys.argv[1:]), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size} bytes)")
