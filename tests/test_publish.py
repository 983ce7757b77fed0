"""make publish: a self-contained copy of the book (fast checks on a hand-made book; the browser
checks of a real one are in test_book_browser.py)."""
from __future__ import annotations

import tarfile
from types import SimpleNamespace

import pytest

from fer_utils.book.offline import css_offhost, offhost_references, strip_cdn_mathjax
from fer_utils.book.publish import TARBALL, PublishError, check_offline, publish
from fer_utils.book.sphinx_offline import clean_page, externalise_plotly

PLOTLY_MATHJAX = '<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/3.2.2/es5/tex-svg.min.js"></script>'
PAGE = f"""<html><head><link rel="stylesheet" href="_static/theme.css"><link rel="canonical" href="https://x.org/">
<script src="_static/app.js"></script></head><body><a href="https://plotly.com/">plotly</a>
<div>{PLOTLY_MATHJAX}<script>Plotly.newPlot("x", [])</script></div></body></html>"""


def test_strip_cdn_mathjax_removes_only_plotlys_tag():
    clean = strip_cdn_mathjax(PAGE)
    assert "mathjax" not in clean and 'Plotly.newPlot("x", [])' in clean and "_static/app.js" in clean


def test_offhost_references():
    assert offhost_references(strip_cdn_mathjax(PAGE)) == []  # links to other sites are not loads
    found = offhost_references(
        '<script src="//cdn.x/a.js"></script><link rel="stylesheet" href="https://fonts.x/css">'
        '<img srcset="local.png 1x, https://img.x/b.png 2x"><div style="background: url(http://x/c.png)"></div>'
        '<style>@import "https://x/d.css"; p { background: url(local.png) }</style><iframe src="inner.html">')
    assert found == ["<script> //cdn.x/a.js", "<link> https://fonts.x/css", "<img> https://img.x/b.png",
                     "<div> http://x/c.png", "<style> https://x/d.css"]
    assert css_offhost("@font-face { src: url('https://f.x/font.woff2') } a { b: url(../local.woff) }") \
        == ["https://f.x/font.woff2"]


@pytest.fixture
def html(tmp_path):
    book = tmp_path / "html"
    (book / "_static").mkdir(parents=True)
    (book / "index.html").write_text(PAGE)
    (book / "_static" / "theme.css").write_text("body { background: url(bg.png) }")
    (book / ".buildinfo").write_text("sphinx build info")
    return book


def test_publish_makes_an_offline_site_and_tarball(html, tmp_path):
    out = tmp_path / "publish"
    site = publish(html, out)
    assert site == out / "site"
    assert "mathjax" not in (site / "index.html").read_text() and "mathjax" in (html / "index.html").read_text()
    assert (site / ".nojekyll").is_file() and not (site / ".buildinfo").exists() and check_offline(site) == []
    with tarfile.open(out / TARBALL) as tar:
        assert {"fer-book/index.html", "fer-book/_static/theme.css", "fer-book/.nojekyll"} <= set(tar.getnames())


def test_publish_refuses_offhost_loads_and_keeps_the_last_site(html, tmp_path):
    out = tmp_path / "publish"
    publish(html, out)
    (html / "_static" / "theme.css").write_text("@import url('https://fonts.googleapis.com/css?family=X');")
    with pytest.raises(PublishError, match=r"_static/theme.css: url https://fonts.googleapis.com"):
        publish(html, out)
    assert "bg.png" in (out / "site" / "_static" / "theme.css").read_text()
    with pytest.raises(PublishError, match="make book"):
        publish(tmp_path / "nothing", out)


def test_sphinx_extension_dedupes_inline_scripts_and_strips_mathjax(tmp_path):
    def js(filename, **attributes):
        return SimpleNamespace(filename=filename, attributes=attributes)

    scripts = [js("_static/a.js"), js(None, body="const X = 1"), js("_static/b.js"), js("", body="const X = 1"),
               js("_static/a.js"), js(None, body="const Y = 2")]
    context = dict(body=f"<p>figure</p>{PLOTLY_MATHJAX}", script_files=scripts, pathto=lambda name, _: name)
    clean_page(SimpleNamespace(outdir=tmp_path), "index", "page.html", context, None)
    assert context["body"] == "<p>figure</p>"
    assert [(s.filename, s.attributes.get("body")) for s in context["script_files"]] == [
        ("_static/a.js", None), (None, "const X = 1"), ("_static/b.js", None), (None, "const Y = 2")]


def test_plotly_bundle_moves_to_one_static_file(tmp_path):
    bundle = "/**\n* plotly.js v4.1.1\n*/\n(function(){ window.Plotly = {}; })();"
    figure = '<div id="f"></div><script>Plotly.newPlot("f", [])</script>'
    static = tmp_path / "_static"
    pages = [externalise_plotly(f"<script>window.PlotlyConfig = {{}};</script><script>{bundle}</script>{figure}",
                                static, lambda name, _: f"../{name}") for _ in range(2)]
    assert pages[0] == pages[1] == ('<script>window.PlotlyConfig = {};</script>'
                                    f'<script src="../_static/plotly-4.1.1.min.js"></script>{figure}')
    assert [p.name for p in static.iterdir()] == ["plotly-4.1.1.min.js"]
    assert (static / "plotly-4.1.1.min.js").read_text() == bundle
    assert externalise_plotly(figure, static, None) == figure  # no bundle on this page: unchanged
