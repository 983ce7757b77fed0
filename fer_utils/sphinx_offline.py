"""Sphinx extension (book/_config.yml: sphinx.extra_extensions) that keeps book pages offline and error-free.

- Removes the MathJax-from-a-CDN <script> that plotly's notebook renderer puts before every
  figure (see fer_utils.offline): the book has no math, and offline that request only fails.
  Sphinx itself loads MathJax only on pages with math (there are none); a page that gains math
  would load it from a CDN, and `make publish` would then refuse to publish (offline check).
- Drops repeated inline <script> bodies: with jupyter-book 1.0.4, Sphinx 7.4 and
  sphinx-book-theme 1.3, the inline snippets of sphinx-thebe and sphinx-togglebutton are written
  twice into every page, and the second `const THEBE_JS_URL = ...` is a JavaScript SyntaxError.
- Sets html_context default_mode to "auto" when the book does not choose one: left empty,
  pydata-sphinx-theme logs "Got invalid theme mode" as a console error on a first visit.
"""
from __future__ import annotations

from .offline import strip_cdn_mathjax


def _script_key(script):
    attributes = getattr(script, "attributes", {}) or {}
    # An inline script is registered with filename None or "": the same snippet either way.
    return getattr(script, "filename", str(script)) or None, attributes.get("body"), tuple(sorted(
        (k, str(v)) for k, v in attributes.items() if k != "body"))


def clean_page(app, pagename, templatename, context, doctree):
    if isinstance(context.get("body"), str):
        context["body"] = strip_cdn_mathjax(context["body"])
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
