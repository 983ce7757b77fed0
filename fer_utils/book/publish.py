"""A self-contained copy of the built book: any static web server, GitHub Pages, or straight from disk.

    python -m fer_utils.book.publish [--html _build/html] [--out _build/publish]      (make publish)

Copies the book (`make book` builds it) to OUT/site, removes the CDN MathJax tag plotly puts
before each figure (book.offline; the book has no math), adds `.nojekyll` (GitHub Pages
would otherwise hide `_static/` and `_sources/`), checks that no page or stylesheet loads
anything from another host, and packs OUT/fer-book.tar.gz (top folder `fer-book/`). The site
is replaced only when all of that succeeded.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import time
from pathlib import Path

from ..paths import BUILD_DIR
from .offline import css_offhost, offhost_references, strip_cdn_mathjax

HTML_DIR = BUILD_DIR / "html"
OUT_DIR = BUILD_DIR / "publish"
TARBALL = "fer-book.tar.gz"


class PublishError(RuntimeError):
    pass


def check_offline(site: Path) -> list[str]:
    """Everything a page or stylesheet of `site` would fetch from another host, as 'file: reference'."""
    problems = []
    for f in sorted(site.rglob("*")):
        if f.suffix == ".html" and "_sources" not in f.relative_to(site).parts:
            problems += [f"{f.relative_to(site)}: {r}" for r in offhost_references(f.read_text(errors="replace"))]
        elif f.suffix == ".css":
            problems += [f"{f.relative_to(site)}: url {r}" for r in css_offhost(f.read_text(errors="replace"))]
    return problems


def publish(html: Path = HTML_DIR, out: Path = OUT_DIR) -> Path:
    """Build OUT/site and OUT/fer-book.tar.gz from the built book `html`; returns OUT/site."""
    html, out = Path(html), Path(out)
    if not (html / "index.html").is_file():
        raise PublishError(f"no built book at {html} (run `make book` first)")
    staging, site = out / "site.staging", out / "site"
    shutil.rmtree(staging, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(html, staging, ignore=shutil.ignore_patterns(".buildinfo", ".doctrees"))
    stripped = 0
    for page in staging.rglob("*.html"):
        text = page.read_text()
        clean = strip_cdn_mathjax(text)
        if clean != text:
            page.write_text(clean)
            stripped += 1
    (staging / ".nojekyll").touch()
    problems = check_offline(staging)
    if problems:
        shutil.rmtree(staging)
        raise PublishError("the book loads files from other hosts, so it would not work offline:\n  "
                           + "\n  ".join(problems[:30]) + ("\n  ..." if len(problems) > 30 else ""))
    shutil.rmtree(site, ignore_errors=True)
    staging.rename(site)
    tarball = out / TARBALL
    partial = out / (TARBALL + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(site, arcname="fer-book")
    partial.replace(tarball)
    pages = sum(1 for _ in site.glob("*.html"))
    print(f"[publish] {pages} pages -> {site} (CDN MathJax removed from {stripped}); "
          f"{tarball} ({tarball.stat().st_size / 1e6:.1f} MB)", flush=True)
    return site


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m fer_utils.book.publish",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=HTML_DIR, help="the built book (default: _build/html)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: _build/publish)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        site = publish(args.html, args.out)
    except PublishError as err:
        print(f"[publish] ERROR: {err}", file=sys.stderr)
        return 1
    print(f"[publish] open {site / 'index.html'} or serve {site}/ ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
