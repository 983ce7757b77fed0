"""Sphinx extension (book/_config.yml: sphinx.extra_extensions) that keeps book pages offline and error-free.

- Removes the MathJax-from-a-CDN <script> that plotly's notebook renderer puts before every
  figure (see book.offline): the book has no math, and offline that request only fails.
  Sphinx itself loads MathJax only on pages with math (there are none); a page that gains math
  would load it from a CDN, and `make publish` would then refuse to publish (offline check).
- Drops repeated inline <script> bodies: with jupyter-book 1.0.4, Sphinx 7.4 and
  sphinx-book-theme 1.3, the inline snippets of sphinx-thebe and sphinx-togglebutton are written
  twice into every page, and the second `const THEBE_JS_URL = ...` is a JavaScript SyntaxError.
- Moves the plotly.js bundle that plotly's notebook renderer inlines into the first figure of
  every chapter (4.6 MB) into one file, _static/plotly-<version>.min.js, that each page loads
  with a plain <script src> at the same place: the same code runs in the same order, and the
  site holds one copy instead of one per page.
- Sets html_context default_mode to "auto" when the book does not choose one: left empty,
  pydata-sphinx-theme logs "Got invalid theme mode" as a console error on a first visit.
"""
from __future__ import annotations

import re
from pathlib import Path

from .offline import strip_cdn_mathjax

PLOTLY_BUNDLE = re.compile(r"<script>(/\*\*\n\* plotly\.js v([\w.-]+)\n.*?)</script>", re.S)


def externalise_plotly(body: str, static_dir: Path, pathto) -> str:
    """Replace each inline plotly.js bundle with a <script src> to a copy written once in static_dir."""
    def replace(match):
        name = f"plotly-{match.group(2)}.min.js"
        target = static_dir / name
        if not target.is_file():
            static_dir.mkdir(parents=True, exist_ok=True)
            target.write_text(match.group(1), encoding="utf-8")
        return f'<script src="{pathto("_static/" + name, 1)}"></script>'
    return PLOTLY_BUNDLE.sub(replace, body)


def _script_key(script):
    attributes = getattr(script, "attributes", {}) or {}
    # An inline script is registered with filename None or "": the same snippet either way.
    return getattr(script, "filename", str(script)) or None, attributes.get("body"), tuple(sorted(
        (k, str(v)) for k, v in attributes.items() if k != "body"))


def clean_page(app, pagename, templatename, context, doctree):
    if isinstance(context.get("body"), str):
        context["body"] = externalise_plotly(strip_cdn_mathjax(context["body"]), Path(app.outdir) / "_static",
                                             context["pathto"])
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        seen, unique = set(), []
        for script in scripts:
            key = _script_key(script)
            if key not in seen:
                seen.add(key)
                unique.append(script)
        scripts[:] = unique


def default_mode(app, config):
    # pydata-sphinx-theme reads it from html_context (it is not a theme option).
    if not config.html_context.get("default_mode"):
        config.html_context["default_mode"] = "auto"


def setup(app):
    app.connect("config-inited", default_mode)
    app.connect("html-page-context", clean_page, priority=900)  # after the themes' own handlers
    return dict(parallel_read_safe=True, parallel_write_safe=True)
