"""The JSON parser of every API view: DRF's, refusing nesting deeper than Python can parse."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSONParser; a body nested deeper than the recursion limit is malformed JSON.

    `json.load` raises RecursionError (not ValueError) for `[[[[...]]]]` a few thousand levels
    deep, which DRF's parser lets through as a 500.
    """

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
