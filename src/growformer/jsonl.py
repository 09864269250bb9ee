"""JSON lines: one JSON value per line, as the run logs and ``.jsonl`` data hold them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class JsonLineError(ValueError):
    """A line that is not valid JSON; ``number`` counts lines from 1."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number} is not valid JSON ({reason})")
        self.number = number
        self.reason = reason


def json_lines(text: str) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of ``text``. Lines end at ``\\n``
    only: JSON strings may hold U+2028 and U+0085 unescaped. Raises ``JsonLineError`` for a
    line Python's parser refuses (nesting past the recursion limit included)."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except (ValueError, RecursionError) as error:
            raise JsonLineError(number, str(error)) from None
