"""A raw HTTP/1.1 client on one kept-alive socket, for floods of small requests (an HTTP library
would spend more time on itself than the server spends refusing): the hostile-client tests and
bench/http_flood.py."""
from __future__ import annotations

import asyncio


async def post_score(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, extra_headers: str) -> int:
    """POST /score with body ``{}`` and ``extra_headers`` (each ending in CRLF); the status code."""
    writer.write(f"POST /score HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n{extra_headers}\r\n{{}}".encode())
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])
