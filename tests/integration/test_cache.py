"""The Redis cache (API tokens, throttle counters) on a real Redis, one client per pool."""

import uuid

from django.conf import settings

from config.cache import ReusingRedisCache


def test_the_redis_cache_works_and_keeps_one_client_per_pool(redis_client):
    cache = ReusingRedisCache(settings.REDIS_URL, {"KEY_PREFIX": f"test-{uuid.uuid4()}"})

    cache.set("token", {"user": 7}, timeout=5)
    assert cache.get("token") == {"user": 7}
    assert cache.add("hits", 0, timeout=5)
    assert cache.incr("hits") == 1
    cache.delete_many(["token", "hits"])
    assert cache.get("token") is None

    client = cache._cache.get_client()
    assert cache._cache.get_client(write=True) is client  # Django's would build a new one
