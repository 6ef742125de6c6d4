"""MkDocs hooks: what the pages' sources say for their other readers, rendered for the site's.

- **Sphinx roles.** The docstrings use ``:class:`~unistore.errors.ValidationError```-style
  roles (they read well in source and in ``help()``); mkdocstrings passes them through
  as text. Each becomes an autorefs cross-reference, its name resolved as Sphinx
  resolves it: relative to the object whose documentation it is in, then to that
  object's class and module, then to the package. A name that resolves to an object
  of unistore must be documented on the site (the strict build fails otherwise); a
  name outside unistore (``logging.NullHandler``) stays code. A leading ``~`` shows
  the last component only, as Sphinx does.
- **Pages named by path.** A docstring's ``docs/operations.md`` (or
  ``docs/guide.md#provider-urls``) becomes a link to that page of the site, under
  the page's title; a path that names no page fails the build.
- **Harness titles.** ``title="not run: <why>"`` on a fenced block is for the test
  that runs the pages' examples (tests/package/test_docs.py); the site leaves it out.

Loaded by ``hooks:`` in mkdocs.yml; not a page (``exclude_docs``).
"""

from __future__ import annotations

import html
import importlib
import re
import types
from typing import Any

_ROLE = r":(?:class|meth|func|mod|attr|exc|data|obj):<code>(?P<target>[^<]+)</code>"
_HEADING = r'<h[1-6] id="(?P<heading>unistore[\w.]*)" class="doc doc-heading"'
_DOCS_PATH = r"(?P<code><code>)?docs/(?P<page>[\w-]+)\.md(?P<anchor>#[\w-]+)?(?(code)</code>)"
_CONTENT = re.compile(f"{_HEADING}|{_ROLE}|{_DOCS_PATH}")
_NOT_RUN_TITLE = re.compile(r'^(?P<fence>\s*(?:```|~~~)[^\n]*?)\s*title="not run:[^"]*"', re.MULTILINE)


def _canonical(path: str) -> str | None:
    """Where ``path`` (dotted) is defined in unistore, as the site documents it, or None.

    ``unistore.migrate.StorageProvider.save`` (a name a module imports) becomes
    ``unistore.providers.base.StorageProvider.save``; a path through a module outside
    unistore (``unistore.logging``) is None.
    """
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        where = parts[:cut]
        for part in parts[cut:]:
            if hasattr(found, part):
                found = getattr(found, part)
            elif part in getattr(found, "__dataclass_fields__", {}) or part in getattr(found, "__annotations__", {}):
                found = None  # a field: the end of the path
            else:
                return None
            home = getattr(found, "__module__", None) if isinstance(found, type) or callable(found) else None
            if isinstance(found, types.ModuleType):
                where = found.__name__.split(".")
            elif home and hasattr(found, "__qualname__"):
                where = [*home.split("."), *found.__qualname__.split(".")]
            else:
                where = [*where, part]
        return ".".join(where) if where[0] == "unistore" else None
    return None


def _resolve(name: str, context: str) -> str | None:
    """The full path ``name`` means in the documentation of ``context``, or None outside unistore."""
    if name.startswith("unistore"):
        return _canonical(name)
    scope = context
    while scope:
        found = _canonical(f"{scope}.{name}")
        if found:
            return found
        scope = scope.rpartition(".")[0]
    return None


def _role(target: str, context: str) -> str:
    shown_name = html.unescape(target).strip()
    name = shown_name.lstrip("~.")
    shown = name.rsplit(".", 1)[-1] if shown_name.startswith("~") else name
    code = f"<code>{html.escape(shown)}</code>"
    resolved = _resolve(name, context)
    if resolved is None:
        return f'<autoref identifier="{html.escape(name)}" optional>{code}</autoref>'
    return f'<autoref identifier="{html.escape(resolved)}">{code}</autoref>'


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Leave the test harness's ``not run`` titles out of the page."""
    return _NOT_RUN_TITLE.sub(r"\g<fence>", markdown)


def on_page_content(html_text: str, page: Any, files: Any, **kwargs: Any) -> str:
    """On the API reference's pages (the docstrings), turn roles into cross-references
    and page paths into links to the pages."""
    if not page.file.src_uri.startswith("reference/"):
        return html_text
    context = "unistore"

    def replace(match: re.Match[str]) -> str:
        nonlocal context
        if match["heading"]:
            context = match["heading"]
            return match[0]
        if match["target"]:
            return _role(match["target"], context)
        target = files.get_file_from_path(f"{match['page']}.md")
        if target is None:
            raise ValueError(f"{page.file.src_uri} names {match[0]!r}, which is no page of the site")
        href = target.url_relative_to(page.file) + (match["anchor"] or "")
        title = target.page.title if target.page is not None and target.page.title else match[0]
        return f'<a href="{html.escape(href)}">{html.escape(title)}</a>'

    return _CONTENT.sub(replace, html_text)
