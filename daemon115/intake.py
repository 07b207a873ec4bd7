"""Where a parsed link becomes a ledger candidate: the one place that knows both vocabularies."""

from __future__ import annotations

from daemon115.ledger import Candidate
from daemon115.links import Link


def candidate(link: Link, *, target: str, source: str, rule: str | None = None,
              title: str | None = None) -> Candidate:
    return Candidate(key=link.key, url=link.url, info_hash=link.info_hash, target=target, source=source,
                     name=title or link.name, rule=rule, size=link.size)
