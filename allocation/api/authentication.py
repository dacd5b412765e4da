"""DRF token authentication with the token's user kept in the cache between requests.

DRF asks the database for the token and its user on every request: on a read, that is as much
work as the read itself, and a write's permission check asks twice more. Here what a token
stands for (its user's id, name and flags, and the user's permissions) is cached for
ALLOCATION_TOKEN_CACHE_SECONDS, and dropped from the cache the moment the token or its user is
saved or deleted, or the user's groups or permissions, or a group's permissions, change
(signals below): a revoked token, a deactivated user or a withdrawn permission is refused at
once. Changes made around the ORM's signals (QuerySet.update, raw SQL) take effect within the
TTL. AllocationConfig.ready() imports this module in every process, so the signals are
connected wherever tokens and permissions change.

No secret reaches the cache: an entry is named by a SHA-256 of the token, and holds neither the
token nor the user's password hash, so whoever can read Redis cannot use what they find there.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.dispatch import receiver
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

logger = logging.getLogger(__name__)


KEY_LENGTH = Token._meta.get_field("key").max_length


def cache_key(key: str) -> str:
    return f"auth-token:{hashlib.sha256(key.encode()).hexdigest()}"


# What an entry keeps of the user: enough for authentication and permission checks (which read
# the permissions themselves, per request).
USER_FIELDS = ("pk", "username", "is_active", "is_staff", "is_superuser")


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's, cached; and a key with a NUL (which PostgreSQL refuses in text) is invalid."""

    def authenticate_credentials(self, key: str) -> Any:
        if "\x00" in key:
            raise exceptions.AuthenticationFailed("Invalid token.")
        # (A key longer than any token's is refused by the database, never looked up here.)
        seconds = settings.ALLOCATION_TOKEN_CACHE_SECONDS if len(key) <= KEY_LENGTH else 0
        user = _cached(key) if seconds else None
        if user is None:
            user, token = super().authenticate_credentials(key)  # refuses unknown and inactive
            if seconds:
                _cache(key, user, seconds)
            return user, token
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return user, Token(key=key, user=user)


def _cached(key: str) -> Any:
    try:
        entry = cache.get(cache_key(key))
    except Exception as exc:  # the cache is an optimisation: without it, ask the database
        logger.debug("token cache unavailable: %s", exc)
        return None
    if entry is None:
        return None
    fields, permissions = entry
    user = get_user_model()(**fields)
    user._perm_cache = set(permissions)  # what ModelBackend.has_perm reads, when it is there
    return user


def _cache(key: str, user: Any, seconds: int) -> None:
    try:
        entry = ({f: getattr(user, f) for f in USER_FIELDS}, sorted(user.get_all_permissions()))
        cache.set(cache_key(key), entry, timeout=seconds)
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
    forget_users([instance.pk])


def forget_users(user_ids: Any) -> None:
    keys = list(Token.objects.filter(user_id__in=list(user_ids)).values_list("key", flat=True))
    if keys:
        forget(*keys)


User = get_user_model()


def _changes(action: str) -> bool:
    # pre_clear: after a clear there is nobody left to name
    return action in ("post_add", "post_remove", "pre_clear")


@receiver(m2m_changed, sender=User.groups.through, dispatch_uid="forget-on-groups")
@receiver(m2m_changed, sender=User.user_permissions.through, dispatch_uid="forget-on-perms")
def _user_permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """A user's groups or permissions changed, from the user's side or the other one."""
    if not _changes(action):
        return
    if reverse:  # a group's members, or a permission's users, changed
        forget_users(pk_set or instance.user_set.values_list("pk", flat=True))
    else:
        forget_users([instance.pk])


@receiver(m2m_changed, sender=Group.permissions.through, dispatch_uid="forget-on-group-perms")
def _group_permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """A group's permissions changed: every member's tokens go."""
    if not _changes(action):
        return
    # Reverse: a permission's groups changed.
    groups = (
        (pk_set or instance.group_set.values_list("pk", flat=True)) if reverse else [instance.pk]
    )
    forget_users(User.objects.filter(groups__in=list(groups)).values_list("pk", flat=True))


@receiver(pre_delete, sender=Group, dispatch_uid="forget-on-group-delete")
def _group_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    forget_users(instance.user_set.values_list("pk", flat=True))
