"""Running many calls with at most N in flight, results in input order.

Used by ``Client.generate_batch`` (threads) and ``AsyncClient.generate_batch``
(tasks). Without ``return_exceptions`` the first error is raised and calls not
yet started are dropped (tasks still running are cancelled; the blocking
client's threads finish the calls they are in). With it, each failed item's
:class:`~switchyard.APIError` takes its place in the list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from switchyard.errors import APIError

Item = TypeVar("Item")
Result = TypeVar("Result")


def _check_concurrency(max_concurrency: int) -> None:
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1 (got {max_concurrency})")


def run_threaded(
    call: Callable[[Item], Result],
    items: Sequence[Item],
    max_concurrency: int,
    return_exceptions: bool,
) -> list[Result | APIError]:
    """Runs ``call`` on every item on at most ``max_concurrency`` threads."""
    _check_concurrency(max_concurrency)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(max_concurrency, len(items))) as pool:
        futures: list[Future[Result]] = [pool.submit(call, item) for item in items]
        if not return_exceptions:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
                raise failed[0].exception()  # type: ignore[misc]
        results: list[Result | APIError] = []
        for future in futures:
            error = future.exception()
            if error is None:
                results.append(future.result())
            elif isinstance(error, APIError):
                results.append(error)
            else:
                raise error
        return results


async def run_concurrently(
    call: Callable[[Item], Awaitable[Result]],
    items: Sequence[Item],
    max_concurrency: int,
    return_exceptions: bool,
) -> list[Result | APIError]:
    """Awaits ``call`` on every item with at most ``max_concurrency`` running at once."""
    _check_concurrency(max_concurrency)
    slots = asyncio.Semaphore(max_concurrency)

    async def bounded(item: Item) -> Result:
        async with slots:
            return await call(item)

    tasks = [asyncio.ensure_future(bounded(item)) for item in items]
    try:
        if not return_exceptions:
            return list(await asyncio.gather(*tasks))
        results: list[Result | APIError] = []
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, APIError):
                raise outcome
            results.append(outcome)
        return results
    finally:
        for task in tasks:
            task.cancel()
        # Collect what the cancelled and failed tasks ended with, so none is left unread.
        await asyncio.gather(*tasks, return_exceptions=True)
