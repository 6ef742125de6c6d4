"""The documentation site as its readers get it: built with ``mkdocs build --strict``
(every link, anchor and docstring cross-reference resolves, or the build fails), then
read back as HTML for what a reader must never see: a docstring example rendered as a
blockquote, a requirement code, an issue number or a commit hash (outside the design
notes, which may cite one), a path to a page where a link belongs, a Sphinx role left
as text, the test harness's titles.
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from helpers import ROOT

#: The modules whose docstrings carry ``>>>`` examples, as the site documents them.
EXAMPLE_MODULES = ["unistore", "unistore.metrics", "unistore.exporters.prometheus", "unistore.testing.glob"]
#: What only the authors of this repository could read.
INSIDER = {
    "a requirement code": re.compile(r"\bR0\d\d\b"),
    "an issue number": re.compile(r"\bissues? \(?#?\d+", re.IGNORECASE),
    "a commit hash": re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"),
    "a harness title": re.compile(r"not run:"),
    "a Sphinx role": re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):"),
}


class Page(HTMLParser):
    """A built page's visible text, and the text of its ``<pre>`` and ``<blockquote>`` blocks."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.html = html
        self.text: list[str] = []
        self.pre: list[str] = []
        self.quotes: list[str] = []
        self._open: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "pre", "blockquote"):
            self._open.append(tag)
            {"pre": self.pre, "blockquote": self.quotes}.get(tag, []).append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if "script" in self._open or "style" in self._open:
            return
        self.text.append(data)
        for tag, blocks in (("pre", self.pre), ("blockquote", self.quotes)):
            if tag in self._open:
                blocks[-1] += data


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Page]:
    """Each page of the built site by its path under the site (``reference/index.html``)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)]
    done = subprocess.run(build, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    pages = {str(path.relative_to(out)): Page(path.read_text()) for path in out.rglob("*.html")}
    assert "index.html" in pages and "reference/index.html" in pages
    return pages


def test_docstring_examples_render_as_code(site: dict[str, Page]) -> None:
    code = "\n".join(block for name, page in site.items() if name.startswith("reference/") for block in page.pre)
    examples = [
        example.source.splitlines()[0]
        for module in EXAMPLE_MODULES
        for test in doctest.DocTestFinder().find(importlib.import_module(module))
        for example in test.examples
    ]
    assert len(examples) >= 10
    missing = [line for line in examples if f">>> {line}" not in code]
    assert not missing, f"docstring examples not rendered as code: {missing}"
    quoted = {name: page.quotes for name, page in site.items() if any(">>>" in q or "import" in q for q in page.quotes)}
    assert not quoted, f"examples rendered as blockquotes: {quoted}"


@pytest.mark.parametrize("what", sorted(INSIDER))
def test_pages_speak_to_users(site: dict[str, Page], what: str) -> None:
    found = {
        name: sorted(set(INSIDER[what].findall(" ".join(page.text))))
        for name, page in site.items()
        if not name.startswith(("design/", "404"))
    }
    assert not {name: hits for name, hits in found.items() if hits}, f"{what} on the site"


def test_docstrings_link_the_pages_they_name(site: dict[str, Page]) -> None:
    reference = {name: page for name, page in site.items() if name.startswith("reference/")}
    named = {name: re.findall(r"docs/[\w-]+\.md", " ".join(page.text)) for name, page in reference.items()}
    assert not {name: paths for name, paths in named.items() if paths}, "a page named by its path, not linked"
    assert '<a href="../observability/">Metrics and logging</a>' in site["reference/index.html"].html


def test_base_classes_of_unistore_are_links(site: dict[str, Page]) -> None:
    bases = [
        item
        for name, page in site.items()
        if name.startswith("reference/")
        for paragraph in re.findall(r"Bases: (.*?)</p>", page.html, re.DOTALL)
        for item in re.findall(r"<code>(.*?)</code>", paragraph, re.DOTALL)
    ]
    assert any("CleanupOnExit" in item for item in bases)
    unresolved = [item for item in bases if item.startswith('<span title="unistore')]
    assert not unresolved


def test_no_list_is_swallowed_by_a_paragraph(site: dict[str, Page]) -> None:
    # A list item whose continuation is indented too little ends the list: the items after
    # it become one paragraph of "- " lines.
    swallowed = {
        name: paragraph[:80]
        for name, page in site.items()
        for paragraph in re.findall(r"<p>((?:(?!</p>).)*)</p>", page.html, re.DOTALL)
        if re.search(r"\n\s*[-*] ", paragraph)
    }
    assert not swallowed
