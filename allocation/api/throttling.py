"""The write throttle: a per-user rate on every command endpoint (v1 and book-compatible)."""

from __future__ import annotations

import logging

from django.conf import settings
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import UserRateThrottle

logger = logging.getLogger(__name__)

DISABLED = {"", "off", "none"}


class WriteRateThrottle(UserRateThrottle):
    """`ALLOCATION_WRITE_THROTTLE_RATE` writes per user; reads are never throttled.

    The rate is read from settings on each request (DRF's own throttles read it once, at
    import). When the cache is unreachable the request goes through: the throttle protects the
    service, it must not be the reason a write fails.
    """

    scope = "write"

    def get_rate(self) -> str | None:
        rate = (settings.ALLOCATION_WRITE_THROTTLE_RATE or "").strip()
        return None if rate.lower() in DISABLED else rate

    def allow_request(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # the cache (Redis) is down or slow
            logger.warning("write throttle skipped: cache unavailable (%s)", exc)
            return True
