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


def _chat_chunks(events, logprobs):
    """The SSE bodies a ChatStream sends for one choice's `events` (held-back tokens carry text "")."""
    import json
    from types import SimpleNamespace

    from gpt3lab.generate.api import EventStream
    from gpt3lab.serve.service import ChatStream

    svc = CompletionService(SimpleNamespace(tokenizer=None, context=64), "m")
    handle = EventStream("r-0")
    for ev in events:
        handle._put(ev)
    handle.close()

    async def collect():
        await svc._acquire(None)
        stream = ChatStream(svc, "chatcmpl-1", [handle], SimpleNamespace(n=1, logprobs=logprobs), False, 0.0)
        try:
            return [json.loads(s[6:]) for s in [x async for x in stream] if s != "data: [DONE]\n\n"]
        finally:
            await stream.close()

    return asyncio.run(collect())


@pytest.mark.parametrize("logprobs", [None, 1])
def test_streamed_chat_sends_no_empty_chunk_while_a_stop_string_is_held_back(logprobs):
    from gpt3lab.generate.api import TokenEvent

    def ev(text, tok, **kw):
        return TokenEvent(index=0, text=text, tokens=[tok], token_texts=[f"t{tok}"], logprobs=[-0.5 * tok],
                          top_logprobs=[{f"t{tok}": -0.5 * tok}] if logprobs else None, text_offset=[0], **kw)

    # "Hi" then "\n" and "Us" held back (a "\nUser:" may be starting), released as "\nUs" + "e"; then stop
    events = [ev("Hi", 1), ev("", 2), ev("", 3), ev("\nUse", 4), TokenEvent(index=0, finish_reason="stop")]
    chunks = _chat_chunks(events, logprobs)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [{"role": "assistant", "content": "Hi"}, {"content": "\nUse"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    if logprobs:     # the held-back tokens' logprobs arrive with the text they became
        got = [t["token"] for c in chunks for t in (c["choices"][0]["logprobs"] or {"content": []})["content"]]
        assert got == ["t1", "t2", "t3", "t4"]
