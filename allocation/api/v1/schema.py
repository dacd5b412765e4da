"""OpenAPI pieces shared by the /api/v1 views (drf-spectacular), and the schema's scope."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import get_doc
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

from allocation.api.v1.serializers import ErrorEnvelopeSerializer

DOCUMENTED_PREFIXES = ("/api/v1/", "/health/")

ERROR_DESCRIPTIONS = {
    400: "Bad input: validation_error (details per field), invalid_quantity, invalid_eta, "
    "invalid_sku, malformed_json, invalid_idempotency_key",
    401: "not_authenticated: no or bad credentials",
    403: "permission_denied: the user lacks the command's permission",
    404: "Not found: unknown_batch, invalid_sku, not_allocated, not_found",
    409: "Conflict: duplicate_batch, allocation_conflict, out_of_stock",
    413: "payload_too_large",
    415: "unsupported_media_type: send application/json",
    422: "idempotency_key_reused: the Idempotency-Key came with another request",
    429: "throttled: too many writes; see Retry-After",
    503: "busy: the product is busy with other writes, or a lock or statement timed out; "
    "database_unavailable: the database cannot be reached. Retry after Retry-After seconds",
}

# A read may be a 404 too: a page or cursor that does not exist (`?page=0`), or no such resource.
READ_ERRORS = (401, 404, 503)
WRITE_ERRORS = (400, 401, 403, 413, 415, 429, 503)


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    return {
        code: OpenApiResponse(ErrorEnvelopeSerializer, description=ERROR_DESCRIPTIONS[code])
        for code in statuses
    }


CORRELATION_ID = OpenApiParameter(
    "X-Correlation-ID",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Ties the request to its events; generated when absent, echoed on responses.",
)
PREFER = OpenApiParameter(
    "Prefer",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="`wait=<seconds>`: answer once the read models show the write (capped by "
    "ALLOCATION_READ_YOUR_WRITES_TIMEOUT); `Preference-Applied: wait=<seconds>` confirms it.",
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Per user: a repeat with the same key and body replays the first response; "
    "the same key with another body is a 422.",
)
WRITE_HEADERS = [CORRELATION_ID, PREFER]
POST_HEADERS = [*WRITE_HEADERS, IDEMPOTENCY_KEY]


def documented_endpoints_only(endpoints, **kwargs):
    """The schema covers /api/v1/ and /health/; the book-compatible endpoints are in README."""
    return [e for e in endpoints if e[0].startswith(DOCUMENTED_PREFIXES)]


class V1AutoSchema(AutoSchema):
    """Describes each operation by the docstring of the view that serves its method.

    One URL may join several views (routing.resource); each operation keeps its own view's
    description instead of the joined class's.
    """

    def get_description(self) -> str:
        method = self.method.lower()
        owner = next((cls for cls in type(self.view).__mro__ if method in vars(cls)), None)
        return get_doc(owner) if owner is not None else super().get_description()
