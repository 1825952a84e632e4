"""What the host's and the tracker's dashboards share: the page around them, tables, charts, paging,
and the two static files (dashboard.css, dashboard.js) served beside them.

Pages are rendered on the server and work without JavaScript; the script only keeps live figures and
charts current from the JSON endpoint a page names. Nothing is loaded from anywhere else, and the
Content-Security-Policy says so. Text from elsewhere (peers' names, store paths) is always escaped.
"""

import math
import time
from dataclasses import dataclass
from html import escape
from importlib import resources

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "cache-control": "no-store"}
STATIC = {name: (resources.files(__package__).joinpath("static", name).read_bytes(), media)
          for name, media in (("dashboard.css", "text/css"), ("dashboard.js", "text/javascript"))}


def page(title: str, body: str, live: str | None = None, every: float = 2.0, refresh_on: str = "") -> str:
    """A whole page; with `live`, the script polls that JSON endpoint every `every` seconds, and fetches
    the page's [data-refresh] parts again when a field `refresh_on` names (comma-separated) changes."""
    polled = f' data-live="{escape(live)}" data-every="{round(every * 1000)}"' if live else ""
    if refresh_on:
        polled += f' data-refresh-on="{escape(refresh_on)}"'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark"><title>{escape(title)}</title>
<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/dashboard.js" defer></script></head>
<body{polled}>
{body}
</body></html>
"""


def table(table_id: str, caption: str, headers: list[str], rows: list[str], empty: str, attributes: str = "") -> str:
    """A table with a caption and column headers; `rows` are rendered `<tr>`s. `attributes` go on its tbody."""
    head = "".join(f'<th scope="col"{_numeric(h)}>{escape(h.lstrip("#"))}</th>' for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}" class="empty">{escape(empty)}</td></tr>'
    return (f'<table id="{table_id}"><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody{attributes}>{body}</tbody></table>")


def _numeric(header: str) -> str:
    """A header written `#Paths` heads a column of numbers, aligned right."""
    return ' class="num"' if header.startswith("#") else ""


def chart(series: str, title: str, format: str, top: float | None = None) -> str:
    """A chart of the last hour that the script draws from the series at `series` of the live answer."""
    fixed = f' data-top="{top}"' if top else ""
    return (f'<figure class="chart" data-series="{series}" data-format="{format}"{fixed}>'
            f"<figcaption><b>{escape(title)}</b><span></span></figcaption>"
            '<svg viewBox="0 0 360 100" preserveAspectRatio="none" role="img" aria-label="no data yet">'
            '<path d="" fill="currentColor" fill-opacity="0.15"/>'
            '<path d="" fill="none" stroke="currentColor" stroke-width="2" vector-effect="non-scaling-stroke"/>'
            '</svg><div class="axis" aria-hidden="true"><span>1 h ago</span><span>now</span></div></figure>')


def card(card_id: str, label: str, value: str, field: str = "", format: str = "", title: str = "") -> str:
    """A figure with its label; with `field`, the script keeps it current."""
    live = f' data-field="{field}" data-format="{format}"' if field else ""
    hint = f' title="{escape(title)}"' if title else ""
    return (f'<li class="card"{hint}><div class="label">{escape(label)}</div>'
            f'<div class="value" id="{card_id}"{live}>{escape(value)}</div></li>')


@dataclass(frozen=True)
class Paging:
    """One page of a long list: `?{param}=N`, counted from 1."""

    param: str
    page: int
    per_page: int
    total: int

    @classmethod
    def of(cls, query: dict[str, str], param: str, per_page: int, total: int) -> "Paging":
        try:
            asked = int(query.get(param, "1"))
        except ValueError:
            asked = 1
        pages = max(1, math.ceil(total / per_page))
        return cls(param, min(max(asked, 1), pages), per_page, total)

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def nav(self, label: str, query: dict[str, str]) -> str:
        """Links to the previous and next pages, keeping the rest of the query."""
        if self.pages == 1:
            return ""

        def link(page: int, text: str) -> str:
            kept = {**query, self.param: str(page)}
            href = "?" + "&amp;".join(f"{escape(k)}={escape(v)}" for k, v in kept.items())
            return f'<a href="{href}" rel="{"prev" if page < self.page else "next"}">{text}</a>'

        first, last = self.offset + 1, min(self.offset + self.per_page, self.total)
        return (f'<nav class="pager" aria-label="{escape(label)}">'
                + (link(self.page - 1, "&larr; previous") if self.page > 1 else "")
                + f"<span>{first:,}&ndash;{last:,} of {self.total:,} (page {self.page} of {self.pages})</span>"
                + (link(self.page + 1, "next &rarr;") if self.page < self.pages else "") + "</nav>")


def status(outcome: str, meaning: str) -> str:
    """An outcome as a badge whose tooltip says what it means."""
    return f'<span class="status {escape(outcome)}" title="{escape(meaning)}">{escape(outcome)}</span>'


def legend(meanings: dict[str, str]) -> str:
    items = "".join(f"<dt>{status(outcome, meaning)}</dt><dd>{escape(meaning)}</dd>" for outcome, meaning in
                    meanings.items())
    return f'<dl class="legend">{items}</dl>'


def clock(moment: float) -> str:
    """A wall-clock moment as the machine's local time, for a table that is read later."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
