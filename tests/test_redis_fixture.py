"""The Redis fixture later issues rely on: a real, private server."""
import redis.asyncio as aioredis


async def test_private_redis_server_is_real_and_not_the_shared_one(redis_url):
    assert not redis_url.endswith(":6379/0")
    client = aioredis.from_url(redis_url)
    try:
        await client.set("kefu:test:key", "值")
        assert (await client.get("kefu:test:key")).decode() == "值"
        info = await client.info("server")
        assert info["tcp_port"] == int(redis_url.rsplit(":", 1)[1].split("/")[0])
    finally:
        await client.aclose()
