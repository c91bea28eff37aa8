"""Calendar: ``Today is Monday, January 30, 2023.`` for the document's date (the paper's tool).

While annotating, the date is the document's own (from its URL, as the paper did, or from a date field such
as CCNet's ``date_download``); at inference it is a given date or today.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from toolformer.corpus.records import DATE_FIELDS
from toolformer.tools.base import Selection, Tool, ToolRequest, register

# /2017/03/09/, /2017-03-09, _20170309_ ... in a URL path. Years are bounded to keep version numbers out.
_URL_DATE = re.compile(
    r"(?<!\d)((?:19[89]\d|20[0-4]\d))[/_-]?(0[1-9]|1[0-2])[/_-]?(0[1-9]|[12]\d|3[01])(?!\d)"
)
_URL_YEAR_MONTH = re.compile(r"/((?:19[89]\d|20[0-4]\d))/(0[1-9]|1[0-2])/")


def format_date(date: dt.date) -> str:
    return f"Today is {date.strftime('%A')}, {date.strftime('%B')} {date.day}, {date.year}."


def parse_date(value: Any) -> dt.date | None:
    """A date from a date/datetime, an ISO string (``2019-07-17``, ``2019-07-17T12:15:59Z``) or None."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    m = re.match(r"(\d{4})-(\d{2})-(\d{2})", text)
    if not m:
        return None
    try:
        return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def date_from_url(url: str | None) -> dt.date | None:
    """The publication date a URL path carries, as the paper used; None when it has none."""
    if not url:
        return None
    path = re.sub(r"^[a-z]+://[^/]+", "", url)
    for m in _URL_DATE.finditer(path):
        try:
            return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            continue
    m = _URL_YEAR_MONTH.search(path)
    if m:
        return dt.date(int(m.group(1)), int(m.group(2)), 1)
    return None


def document_date(
    url: str | None, fields: Mapping[str, Any], sources: Iterable[str] = ("url", "date_download", "date")
) -> tuple[dt.date | None, str | None]:
    """(date, where it came from), trying ``sources`` in order: ``url`` or a field name."""
    for source in sources:
        date = date_from_url(url) if source == "url" else parse_date(fields.get(source))
        if date is not None:
            return date, source
    return None, None


@dataclass
class CalendarOptions:
    today: Optional[str] = None  # at inference, a fixed date; otherwise the request's context (or today)


@register
class Calendar(Tool):
    name = "Calendar"
    quote_input = False
    input_regex = ""  # Calendar() takes no input
    Options = CalendarOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.today = parse_date(self.options.today)

    @classmethod
    def select(cls, text, corpus_cfg, seed: int = 0) -> Selection:
        """Texts whose document date can be found (URL or a date field); the date is what the tool returns."""
        sources = ["date" if s in DATE_FIELDS else s for s in corpus_cfg.date_sources]
        date, source = document_date(text.url, {"date": text.date}, sources)
        if date is None:
            return Selection(False, "no_document_date")
        return Selection(True, f"date_from_{source}", {"date": date.isoformat()})

    def run(self, request: ToolRequest) -> str | None:
        if request.input.strip():
            return None  # Calendar() takes no input; anything else is a malformed call
        date = parse_date(request.context.get("date")) or self.today
        if date is None and request.context.get("allow_today", False):
            date = dt.date.today()
        return format_date(date) if date else None
