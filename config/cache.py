"""Django's Redis cache, with one redis.Redis client per connection pool.

Django builds a new `redis.Redis` for every cache call, and redis-py 8 fills a table of about
170 response callbacks in each: a tenth of a millisecond per call, on every request that
authenticates with a token or is throttled. The clients share the pool's connections either
way; keeping one per pool changes nothing else. A forked process builds its own (the pool
itself is fork-aware).
"""

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class ReusingRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class ReusingRedisCache(RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient
