"""Serving-layer internals that a black-box HTTP test cannot stage reliably."""
import asyncio

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
