"""Keep the book free of requests to other hosts (CDNs), so it works offline and from disk.

plotly's HTML renderers ("notebook" included) put a MathJax <script> from cdnjs before every
figure: plotly 7.1 hard-codes include_mathjax="cdn" in HtmlRenderer.to_mimebundle, and no
renderer, Sphinx, myst-nb or jupyter-book setting removes it. We use no LaTeX in figures, so the
tag is only an off-host request that fails (or hangs) offline. strip_cdn_mathjax() removes it;
book.sphinx_offline applies it to every book page, book.publish to the published copy.

offhost_references() lists what a page would load from another host (the publish check).
"""
from __future__ import annotations

import re
from html.parser import HTMLParser

# The tag plotly emits: <script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/3.2.2/es5/tex-svg.min.js"></script>
CDN_MATHJAX = re.compile(r'<script\s+src="https?://[^"]*/mathjax/[^"]*"\s*>\s*</script>', re.IGNORECASE)


def strip_cdn_mathjax(html: str) -> str:
    """`html` without plotly's MathJax-from-a-CDN script tags."""
    return CDN_MATHJAX.sub("", html)


# Tags and attributes whose URL the browser fetches by itself (links to other sites, <a href>, are fine).
_FETCHED = {"script": ("src",), "img": ("src", "srcset"), "source": ("src", "srcset"), "iframe": ("src",),
            "embed": ("src",), "video": ("src", "poster"), "audio": ("src",), "track": ("src",),
            "object": ("data",), "input": ("src",)}
_LINK_FETCHED = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "shortcut", "apple-touch-icon",
                 "manifest", "preconnect", "dns-prefetch", "import"}
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", re.IGNORECASE)


def is_offhost(url: str) -> bool:
    """True for an absolute http(s) or protocol-relative URL (anything not served with the site)."""
    url = url.strip().lower()
    return url.startswith(("http://", "https://", "//"))


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        urls = []
        if tag == "link" and _LINK_FETCHED & set((attrs.get("rel") or "").lower().split()):
            urls.append(attrs.get("href") or "")
        for name in _FETCHED.get(tag, ()):
            value = attrs.get(name) or ""
            urls += [part.split()[0] for part in value.split(",") if part.strip()] if name == "srcset" else [value]
        urls += [m.group(1) or m.group(2) for m in _CSS_URL.finditer(attrs.get("style") or "")]
        self.found += [f"<{tag}> {u}" for u in urls if is_offhost(u)]

    def handle_data(self, data):
        if self.lasttag == "style":
            self.found += [f"<style> {u}" for u in css_offhost(data)]

    handle_startendtag = handle_starttag


def css_offhost(css: str) -> list[str]:
    """Off-host url(...) and @import targets of a stylesheet."""
    return [u for m in _CSS_URL.finditer(css) if is_offhost(u := (m.group(1) or m.group(2)))]


def offhost_references(html: str) -> list[str]:
    """What an HTML page would fetch from another host: script/img/iframe sources, stylesheets,
    preloads, icons, fonts and images in inline CSS. Plain links (<a href>) do not count, nor do
    URLs inside inline scripts (a static scan cannot tell; the browser test checks those)."""
    parser = _Refs()
    parser.feed(html)
    parser.close()
    return parser.found
