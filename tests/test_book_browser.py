"""The built book in a real browser (Debian's Chromium, driven by Playwright).

The tiny synthetic book (conftest's `tiny_book`, built once; tests/test_pipeline.py checks its build) is
published with the function `make publish` uses. Then, served over HTTP and opened from disk
(file://, the published copy), every page must load with no failed local request, no JavaScript
or console error and no request to another host; every plotly figure must draw its data; images
must load; the footer must name the data fingerprint; "next" must walk the chapters in order.
Screenshots of the chapter pages go to test-artifacts/book/.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from browser import PageWatch, chromium_or_skip, launch, serve_dir
from fer_utils.book.publish import TARBALL, check_offline, publish

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "book"

# Per figure: is there an SVG, and how many data marks did plotly draw (bars, points, lines, images)?
# WebGL traces (scattergl) draw into a canvas instead: for those, a sized canvas counts as marks.
MARKS = ".trace, .bars path, .point, path.js-line, image, canvas.gl-canvas"
FIGURES_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => {
    const marks = Array.from(d.querySelectorAll('%s'))
        .filter(e => e.tagName !== 'CANVAS' || (e.width > 0 && e.height > 0));
    const images = Array.from(d.querySelectorAll('image')).map(i => (i.href && i.href.baseVal) || '');
    const box = d.getBoundingClientRect();
    return {id: d.id, svg: d.querySelectorAll('svg.main-svg').length, marks: marks.length,
            traces: (d._fullData || []).length, width: box.width, height: box.height,
            bad_images: images.filter(h => !h.startsWith('data:image/') || h.length < 100).length};
})""" % MARKS
ALL_DRAWN_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).every(
    d => d.querySelector('svg.main-svg') && d.querySelector('%s'))""" % MARKS
BROKEN_IMAGES_JS = """() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)
    .map(i => i.currentSrc || i.src)"""


@pytest.fixture(scope="module")
def book(request):
    chromium_or_skip()  # before the build: no browser, nothing to check
    tiny_book = request.getfixturevalue("tiny_book")  # the build test_pipeline checks too
    assert tiny_book.code == 0
    tmp = tiny_book.root
    html = tmp / "_build" / "html"
    toc = yaml.safe_load((tmp / "_build" / "src" / "_toc.yml").read_text())
    out = tmp / "publish"
    return SimpleNamespace(html=html, site=publish(html, out), out=out,
                           prov=json.loads((tmp / "runs" / "tiny" / "provenance.json").read_text()),
                           order=[toc["root"]] + [c["file"] for c in toc["chapters"]],
                           pages=sorted(p.stem for p in html.glob("*.html")))


@pytest.fixture(scope="module")
def browser():
    with launch() as b:
        yield b


def check_loaded(page, watch: PageWatch, name: str, book, shots: Path, wait_ms: int = 20_000) -> list[str]:
    """Checks the page loaded in `page` (figures get `wait_ms` to draw); returns what is wrong with it."""
    problems = []
    if page.locator(".plotly-graph-div").count():
        try:
            page.wait_for_function(ALL_DRAWN_JS, timeout=wait_ms)
        except Exception:  # reported figure by figure below
            pass
    for fig in page.evaluate(FIGURES_JS):
        if not (fig["svg"] and fig["marks"] and fig["traces"] and fig["width"] > 0 and fig["height"] > 0) \
                or fig["bad_images"]:
            problems.append(f"figure not drawn: {fig}")
    problems += [f"image did not load: {src}" for src in page.evaluate(BROKEN_IMAGES_JS)]
    widgets = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    if widgets:  # the book loads no widget manager (book/_config.yml nb_ipywidgets_js): they'd be blank
        problems.append(f"{widgets} ipywidgets output(s) in the static book: tag their cells remove-cell")
    footer = page.locator(".extra_footer")
    text = footer.first.inner_text() if footer.count() else ""
    if book.prov["data_fingerprint"] not in text:
        problems.append(f"footer lacks the data fingerprint {book.prov['data_fingerprint']}: {text!r}")
    if name in book.order:
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    page.wait_for_timeout(100)  # late console errors
    return [f"{name}: {p}" for p in problems + watch.take()]


def check_book(context, url_of, book, shots: Path) -> tuple[list[str], list[str]]:
    """From the front page, check each page and click "next" until the last chapter; then check
    the remaining pages (index, search) directly. Returns (problems, pages reached by "next")."""
    page = context.new_page()
    watch = PageWatch(page)
    problems, visited = [], []
    try:
        page.goto(url_of(book.order[0]), wait_until="load")
        while True:
            name = Path(page.url.split("#")[0]).stem
            visited.append(name)
            if not page.locator("main h1 >> visible=true").count():
                problems.append(f"{name}: no visible heading")
            problems += check_loaded(page, watch, name, book, shots)
            if not page.locator("a.right-next").count() or len(visited) > len(book.order):
                break
            with page.expect_navigation(wait_until="load"):
                page.locator("a.right-next").first.click()
        for name in sorted(set(book.pages) - set(visited)):
            page.goto(url_of(name), wait_until="load")
            problems += check_loaded(page, watch, name, book, shots)
    finally:
        page.close()
    return problems, visited


def test_book_pages_render_in_browser(book, browser):
    assert {"index", "01_data"} <= set(book.order) and set(book.order) <= set(book.pages)
    data_page = (book.html / "01_data.html").read_text()
    assert data_page.count('class="plotly-graph-div"') >= 3
    assert "cdnjs" not in data_page and data_page.count("THEBE_JS_URL =") == 1  # fer_utils.book.sphinx_offline ran
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        with serve_dir(book.html) as base:
            problems, visited = check_book(context, lambda name: f"{base}{name}.html", book, ARTIFACTS / "served")
    finally:
        context.close()
    assert not problems, "\n".join(problems)
    assert visited == book.order, "the next links do not walk the chapters in order"


def test_published_copy_works_from_disk(book, browser):
    site = book.site
    assert (site / "index.html").is_file() and (site / ".nojekyll").is_file()
    assert check_offline(site) == []
    with tarfile.open(book.out / TARBALL) as tar:
        names = set(tar.getnames())
    assert {f"fer-book/{name}.html" for name in book.order} <= names and "fer-book/.nojekyll" in names
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        problems, visited = check_book(context, lambda name: (site / f"{name}.html").as_uri(), book,
                                       ARTIFACTS / "file")
    finally:
        context.close()
    assert not problems, "\n".join(problems)
    assert visited == book.order, "the next links do not walk the chapters in order (file://)"


BROKEN_PAGE = """<!doctype html><html><head><script src="https://cdn.example.invalid/lib.js"></script></head>
<body><main><h1>Broken</h1>
<div class="plotly-graph-div" style="height:100px; width:100px"></div>
<img src="missing.png"><script>throw new Error("boom")</script>
<footer><div class="extra_footer">no fingerprint here</div></footer></main></body></html>"""


def test_checks_catch_a_broken_page(browser, tmp_path):
    """The checks above are not vacuous: each kind of breakage is reported."""
    (tmp_path / "broken.html").write_text(BROKEN_PAGE)
    book = SimpleNamespace(prov=dict(data_fingerprint="0123456789abcdef"), order=["broken"])
    context = browser.new_context()
    try:
        with serve_dir(tmp_path) as base:
            page = context.new_page()
            watch = PageWatch(page)
            page.goto(f"{base}broken.html", wait_until="load")
            problems = "\n".join(check_loaded(page, watch, "broken", book, tmp_path / "shots", wait_ms=1000))
    finally:
        context.close()
    for expected in ("figure not drawn", "image did not load", "footer lacks the data fingerprint",
                     "missing.png -> HTTP 404", "JavaScript error: boom",
                     "off-host request: https://cdn.example.invalid/lib.js"):
        assert expected in problems, f"{expected!r} not reported in:\n{problems}"
