"""Pieces every HTTP-speaking source shares for reading a ranged response body."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from storage.errors import TransientError


def body_range(read_chunk: Callable[[], bytes], status: int, start: int, end: int | None) -> Iterator[bytes]:
    """Bytes ``[start, end)`` from a body that answered a ranged GET with ``status``.

    A 206 body is the range itself. A 200 body is the whole object from a server that ignored
    ``Range``: its first ``start`` bytes are dropped. Either way no more than ``end - start`` bytes
    are yielded. ``read_chunk()`` returns the next chunk, ``b""`` at the end.
    """
    skip = start if status == 200 else 0
    remaining = None if end is None else end - start
    while remaining is None or remaining > 0:
        chunk = read_chunk()
        if not chunk:
            return
        if skip:
            if len(chunk) <= skip:
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
        if remaining is not None:
            chunk = chunk[:remaining]
            remaining -= len(chunk)
        yield chunk


async def read_up_to(body, n: int) -> bytes:
    """Up to ``n`` bytes from an async body (fewer only at its end). aiohttp hands out whatever is
    buffered, often 64 KiB; gathering a full chunk on the event loop makes one thread hop per MiB
    rather than per packet."""
    parts, got = [], 0
    while got < n:
        data = await body.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def urllib3_range(resp, start: int, end: int | None, what: str) -> Iterator[bytes]:
    """``body_range`` over a urllib3 response (status already checked), in 1 MiB chunks.

    Network failures become TransientError naming ``what``. A fully read ranged response goes back
    to the pool; anything else may still have body bytes in flight, so its connection is closed.
    """
    import urllib3

    from storage.sources.base import CHUNK

    finished = False
    try:
        received = 0
        for chunk in body_range(lambda: resp.read(CHUNK, decode_content=False), resp.status, start, end):
            received += len(chunk)
            yield chunk
        finished = end is None or (resp.status == 206 and received == end - start)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(f"{what}: {type(exc).__name__} while reading") from None
    finally:
        if finished:
            resp.release_conn()
        else:
            resp.close()


def urllib3_pool(settings):
    """A connection pool for one download: a connection per worker, the engine's timeouts (the
    read timeout is the stall timeout), redirects followed, and no retries of its own — the engine
    retries, resuming by range."""
    import urllib3

    return urllib3.PoolManager(
        maxsize=max(4, settings.concurrency),
        block=False,
        timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.stall_timeout),
        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=10,
                              raise_on_redirect=True, raise_on_status=False),
    )
