"""MkDocs hook: render the Sphinx roles of unistore's docstrings as cross-references.

The docstrings use ``:class:`~unistore.errors.ValidationError```-style roles (read
well in source and in ``help()``); mkdocstrings passes them through as text. This
hook turns each rendered role into an autorefs cross-reference: a link when the
name is documented on the site, plain code otherwise (``optional``). A leading
``~`` shows the last component only, as Sphinx does. Loaded by ``hooks:`` in
mkdocs.yml; not a page (``exclude_docs``).
"""

from __future__ import annotations

import html
import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):<code>(?P<target>[^<]+)</code>")


def _reference(match: re.Match[str]) -> str:
    target = html.unescape(match["target"]).strip()
    short = target.startswith("~")
    name = target.lstrip("~.")
    shown = name.rsplit(".", 1)[-1] if short else name
    return f'<autoref identifier="{html.escape(name)}" optional><code>{html.escape(shown)}</code></autoref>'


def on_page_content(html_text: str, **kwargs: Any) -> str:
    """Replace every rendered Sphinx role in a page with a cross-reference."""
    return _ROLE.sub(_reference, html_text)
