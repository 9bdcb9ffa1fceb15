"""Serving-layer internals that a black-box HTTP test cannot stage reliably."""
import asyncio

import pytest

from gpt3lab.serve.service import ClientDisconnected, CompletionService


def test_race_never_leaks_a_slot_acquired_while_checking_for_disconnect():
    async def go():
        sem = asyncio.Semaphore(1)
        await sem.acquire()                      # the one slot is busy

        async def disconnected():                # the slot frees up while we ask about the client
            sem.release()
            for _ in range(3):
                await asyncio.sleep(0)
            return True

        svc = CompletionService.__new__(CompletionService)   # _race uses no instance state
        try:
            await svc._race(sem.acquire(), disconnected)
            sem.release()                        # we were handed the slot: give it back as callers do
        except ClientDisconnected:
            pass                                 # acceptable only if the slot was not taken
        return sem.locked()

    assert asyncio.run(go()) is False


def test_a_request_holding_a_free_slot_is_never_counted_as_queued():
    """max_concurrent=1, max_queue=1: the first request takes the free slot, so a second one arriving in
    the same loop turn must queue, not get a 429 (it did: the first was still counted as waiting)."""
    import asyncio
    from types import SimpleNamespace

    from gpt3lab.generate.api import QueueFullError

    svc = CompletionService(SimpleNamespace(tokenizer=None, context=8), "m", max_concurrent=1, max_queue=1)

    async def scenario():
        first = asyncio.ensure_future(svc._acquire(None))
        second = asyncio.ensure_future(svc._acquire(None))
        await asyncio.sleep(0)                       # both have run up to their first suspension
        with pytest.raises(QueueFullError):          # the queue (1) is full now: the third is refused
            await svc._acquire(None)
        await first
        assert svc.metrics.running == 1 and svc.metrics.waiting == 1 and not second.done()
        svc._release()
        await second
        assert svc.metrics.running == 1 and svc.metrics.waiting == 0

    asyncio.run(asyncio.wait_for(scenario(), 10))   # the old accounting let the third wait forever
