import math

import pytest
import torch
import torch.nn.functional as F

from gpt3lab.eval.scoring import loglikelihood, perplexity, rolling_windows, score_choices, score_requests


def direct_logprobs(model, ctx, cont):
    """Independent reference: one forward over ctx+cont, log_softmax, pick each continuation token."""
    ids = torch.tensor([ctx + cont])
    logits, _ = model(ids[:, :-1])
    lp = F.log_softmax(logits[0].double(), -1)
    return [lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)]


def test_loglikelihood_is_sum_of_direct_token_logprobs(model, tok):
    ctx, cont = tok.encode("To be, or not to"), tok.encode(" be, that is")
    ref = direct_logprobs(model, ctx, cont)
    s = loglikelihood(model, ctx, cont)
    assert s.n_tokens == len(cont) and s.logprob == pytest.approx(sum(ref), abs=1e-4)


def test_is_greedy_matches_argmax(model, tok):
    ctx = tok.encode("The quick brown")
    ids = list(ctx)
    for _ in range(3):                       # build the greedy continuation by hand
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    greedy = ids[len(ctx):]
    assert loglikelihood(model, ctx, greedy).is_greedy
    other = greedy[:-1] + [(greedy[-1] + 1) % tok.vocab_size]
    assert not loglikelihood(model, ctx, other).is_greedy


@pytest.mark.parametrize("pattern", ["dense", "alternating"])
def test_batched_scoring_equals_unbatched(tok, new_model, pattern):
    model, _ = new_model(tok, pattern=pattern, seed=1)
    ctx = tok.encode("What is 12 plus 34? A:")     # > local window 8: exercises the banded ring cache
    conts = [tok.encode(c) for c in [" 46", " 47 and more words", " fox", " To be, or not"]]
    ref = [loglikelihood(model, ctx, c) for c in conts]
    for got in (score_choices(model, ctx, conts), score_requests(model, [(ctx, c) for c in conts], batch_size=3)):
        for g, r in zip(got, ref):
            assert g.logprob == pytest.approx(r.logprob, abs=1e-4)
            assert g.is_greedy == r.is_greedy and g.n_tokens == r.n_tokens


def test_score_requests_mixed_contexts_and_empty_context(model, tok):
    reqs = [(tok.encode("The lazy"), tok.encode(" dog")), ([], tok.encode("To be")),
            (tok.encode("question " * 40), tok.encode(" fox"))]        # last one is left-truncated
    got = score_requests(model, reqs, eot=tok.eot_id, batch_size=8)
    ref = [loglikelihood(model, c, k, eot=tok.eot_id) for c, k in reqs]
    assert [g.logprob for g in got] == pytest.approx([r.logprob for r in ref], abs=1e-4)
    assert got[1].logprob == pytest.approx(sum(direct_logprobs(model, [tok.eot_id], reqs[1][1])), abs=1e-4)


def test_rolling_windows_score_every_token_once():
    for n, C, s in [(1, 8, 4), (8, 8, 4), (9, 8, 4), (50, 8, 3), (50, 8, 8), (17, 8, 1)]:
        covered = []
        for start, end, k in rolling_windows(n, C, s):
            assert end - start <= C and 1 <= k <= end - start
            covered += range(end - k, end)              # target positions (token indices)
        assert covered == list(range(n))


def test_perplexity_short_text_equals_exp_mean_nll(model, tok):
    text = "To be, or not to be, that is the question."
    ids = tok.encode(text)
    r = perplexity(model, ids, len(text.encode()), tok.eot_id)
    ref = -sum(direct_logprobs(model, [tok.eot_id], ids))
    assert r.n_windows == 1 and r.n_tokens == len(ids)
    assert r.perplexity == pytest.approx(math.exp(ref / len(ids)), rel=1e-5)
    assert r.bits_per_byte == pytest.approx(ref / (len(text.encode()) * math.log(2)), rel=1e-5)


def test_perplexity_longer_than_context_rolling(tok, new_model, independent_nll):
    model, cfg = new_model(tok, context=16, seed=2)
    text = "The quick brown fox jumps over the lazy dog. To be, or not to be. " * 2
    ids = tok.encode(text)
    assert len(ids) > 2 * cfg.context
    r = perplexity(model, ids, len(text.encode()), tok.eot_id, stride=5, batch_size=3)
    ref = independent_nll(model, ids, tok.eot_id, cfg.context, 5)
    assert r.n_windows > 3
    assert r.nll == pytest.approx(ref, rel=1e-5)
    assert r.perplexity == pytest.approx(math.exp(ref / len(ids)), rel=1e-5)
    assert r.n_bytes == len(text.encode())
    assert r.bits_per_byte == pytest.approx(ref / (len(text.encode()) * math.log(2)), rel=1e-5)
