"""Strangers' and broken requests to the console get a 4xx, never a 500: cookies and headers that are not UTF-8, an
Origin that is not a URL, form bodies that cannot be read, forged initData that is not ASCII, odd numbers in the URL."""
import asyncio

import pytest
from aiohttp.test_utils import TestClient

from .consolekit import ADMIN, console_client, console_settings, login

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def console(redis_url, prefix):
    async with console_client(console_settings(redis_url, prefix)) as pair:
        yield pair


async def raw(client: TestClient, head: bytes) -> bytes:
    """The status line of a request sent as these bytes (aiohttp's client will not send what is not text)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + b"Connection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer.split(b"\r\n", 1)[0]


def multipart(disposition: bytes, content: bytes, csrf: str = "") -> bytes:
    parts = [b'Content-Disposition: form-data; name="csrf"\r\n\r\n' + csrf.encode(),
             b"Content-Disposition: form-data; " + disposition + b"\r\n\r\n" + content]
    return b"".join(b"--xx\r\n" + part + b"\r\n" for part in parts) + b"--xx--\r\n"


async def test_a_cookie_that_is_not_utf8_is_no_session(console):
    client, _ = console
    for method, path, status in ((b"GET", b"/", b"303"), (b"POST", b"/logout", b"401")):
        head = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nCookie: kefu_console=\xff\xfe\r\nContent-Length: 0\r\n"
        assert (await raw(client, head)).split()[1] == status


async def test_an_origin_that_is_not_a_url_is_foreign(console):
    client, _ = console
    for origin in ("http://[", "http://[zz]"):
        assert (await client.post("/login/abc", headers={"Origin": origin}, allow_redirects=False)).status == 403, origin
    head = b"POST /login/abc HTTP/1.1\r\nHost: x\r\nOrigin: http://a\xef\xbc\x83b\r\nContent-Length: 0\r\n"  # a fullwidth "#"
    assert (await raw(client, head)).split()[1] == b"403"


async def test_forms_that_cannot_be_read_get_400(console):
    client, c = console
    assert (await client.post("/app/login", data=b"init_data=\xff", headers=FORM)).status == 400
    unknown_charset = {"Content-Type": "application/x-www-form-urlencoded; charset=nope"}
    assert (await client.post("/app/login", data=b"init_data=x", headers=unknown_charset)).status == 400
    token = await login(client, c, ADMIN)
    assert (await client.post("/faq/add", data=f"csrf={token}&question=\xff".encode("latin-1"), headers=FORM)).status == 400
    no_boundary = {"Content-Type": "multipart/form-data"}
    assert (await client.post("/faq/add", data=b"junk", headers=no_boundary)).status == 400
    assert await c.kefu.faq.count() == 0


async def test_a_file_name_that_is_not_utf8_is_imported_and_audited(console):
    client, c = console
    token = await login(client, c, ADMIN)
    body = multipart(b'name="file"; filename="\xff\xfe.csv"', "question,answer\n几点发货？,下午四点前\n".encode(), token)
    response = await client.post("/faq/import", data=body, headers={"Content-Type": "multipart/form-data; boundary=xx"})
    assert response.status == 200 and await c.kefu.faq.count() == 1
    assert "faq.import" in await (await client.get("/audit")).text()


async def test_init_data_with_a_hash_that_is_not_ascii_is_forged(console):
    client, _ = console
    assert (await client.post("/app/login", data={"init_data": "auth_date=1&hash=%C3%A9"})).status == 403


async def test_odd_numbers_in_the_url_fall_back_or_are_not_found(console):
    client, c = console
    await login(client, c, ADMIN)  # an operator gets 403 for any path no route takes
    for days in ("²", "٣", "-1", "1e9"):
        assert (await client.get("/", params={"days": days})).status == 200, days
    assert (await client.get("/handoffs/" + "9" * 5000, allow_redirects=False)).status == 404
    # digits of other scripts: int() reads them, Redis refuses them as a stream id (a 500 for GET and every POST)
    for path in ("/exchange/١-١", "/exchange/1-١", "/faq/١", "/models/v١٢٣٤/loss.png"):
        assert (await client.get(path, allow_redirects=False)).status == 404, path


async def test_a_link_token_no_link_can_have_gets_the_refusal_not_a_button(console):
    """/login/..%2Flogout rendered a button whose form posted to /login/../logout."""
    client, _ = console
    response = await client.get("/login/..%2Flogout")
    assert response.status == 403 and "<form" not in await response.text()
    assert (await client.get("/login/abc_DEF-123")).status == 200
