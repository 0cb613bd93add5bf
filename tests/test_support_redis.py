"""The throwaway Redis the suite's rate-limit and outage tests run against."""

from __future__ import annotations

import pytest
import redis

from tests.support.redis import RedisServer, closed_redis_url


def test_set_get_round_trip(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.set("graphgate:probe", "hello")
        assert client.get("graphgate:probe") == b"hello"


def test_each_test_starts_empty(redis_server: RedisServer, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("graphgate:left-behind", "1")
    redis_server.flush()
    with redis_server.client() as client:
        assert client.dbsize() == 0


def test_stop_refuses_connections_and_start_restores_same_port(
    redis_server: RedisServer, redis_url: str
) -> None:
    port = redis_server.port
    redis_server.stop()
    try:
        assert not redis_server.running
        with redis.Redis.from_url(redis_url, socket_connect_timeout=2) as client, \
                pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        redis_server.start()
    assert redis_server.port == port
    assert redis_server.url == redis_url
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()


def test_closed_url_refuses_connections() -> None:
    with redis.Redis.from_url(closed_redis_url(), socket_connect_timeout=2) as client, \
            pytest.raises(redis.ConnectionError):
        client.ping()
