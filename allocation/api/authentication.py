"""DRF token authentication with the token's user kept in the cache between requests.

DRF asks the database for the token and its user on every request: on a read, that is as much
work as the read itself. Here the token (with its user) is cached for
ALLOCATION_TOKEN_CACHE_SECONDS, and dropped from the cache the moment the token or its user is
saved or deleted (signals below), so a revoked token or a deactivated user is refused at once.
Changes made around the ORM's signals (QuerySet.update, raw SQL) take effect within the TTL.
Permissions are not cached: they are read per request, as before. AllocationConfig.ready()
imports this module in every process, so the signals are connected wherever tokens change.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

logger = logging.getLogger(__name__)


KEY_LENGTH = Token._meta.get_field("key").max_length


def cache_key(key: str) -> str:
    return f"auth-token:{key}"


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's, cached; and a key with a NUL (which PostgreSQL refuses in text) is invalid."""

    def authenticate_credentials(self, key: str) -> Any:
        if "\x00" in key:
            raise exceptions.AuthenticationFailed("Invalid token.")
        # (A key longer than any token's is refused by the database, never looked up here.)
        seconds = settings.ALLOCATION_TOKEN_CACHE_SECONDS if len(key) <= KEY_LENGTH else 0
        token = _cached(key) if seconds else None
        if token is None:
            user, token = super().authenticate_credentials(key)  # refuses unknown and inactive
            if seconds:
                _cache(key, token, seconds)
            return user, token
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return token.user, token


def _cached(key: str) -> Token | None:
    try:
        return cache.get(cache_key(key))
    except Exception as exc:  # the cache is an optimisation: without it, ask the database
        logger.debug("token cache unavailable: %s", exc)
        return None


def _cache(key: str, token: Token, seconds: int) -> None:
    try:
        cache.set(cache_key(key), token, timeout=seconds)
    except Exception as exc:
        logger.debug("token cache unavailable: %s", exc)


def forget(*keys: str) -> None:
    """Drop tokens from the cache. If the cache cannot be reached, they expire with their TTL."""
    try:
        cache.delete_many([cache_key(k) for k in keys])
    except Exception:
        logger.warning(
            "could not drop tokens from the cache; they expire within %ss",
            settings.ALLOCATION_TOKEN_CACHE_SECONDS,
            exc_info=True,
        )


@receiver([post_save, post_delete], sender=Token, dispatch_uid="forget-token")
def _token_changed(sender: Any, instance: Token, **kwargs: Any) -> None:
    forget(instance.key)


@receiver([post_save, post_delete], sender=get_user_model(), dispatch_uid="forget-user-tokens")
def _user_changed(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    if update_fields is not None and set(update_fields) == {"last_login"}:
        return  # every login saves this; it changes nothing a token stands for
    keys = list(Token.objects.filter(user_id=instance.pk).values_list("key", flat=True))
    if keys:
        forget(*keys)
