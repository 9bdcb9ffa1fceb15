"""Sampling primitives on hand-made distributions: greedy, top-k, top-p, seeds, per-row controls."""

import torch

from gpt3lab.generate.sampling import sample, top_k_filter, top_p_filter


def logits_of(probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().float()[None]   # (1, V)


def kept(filtered: torch.Tensor) -> list[int]:
    return torch.isfinite(filtered[0]).nonzero().flatten().tolist()


def test_top_p_keeps_smallest_set_reaching_p():
    x = logits_of([0.05, 0.5, 0.1, 0.25, 0.1])      # sorted: 1 (.5), 3 (.25), 2/4 (.1), 0 (.05)
    assert kept(top_p_filter(x, 0.3)) == [1]              # .5 >= .3 already
    assert kept(top_p_filter(x, 0.5 - 1e-4)) == [1]
    assert kept(top_p_filter(x, 0.7)) == [1, 3]           # .75 >= .7, .5 < .7
    assert len(kept(top_p_filter(x, 0.8))) == 3           # .85: one of the tied .1 tokens joins
    assert kept(top_p_filter(x, 0.9)) == [1, 2, 3, 4]     # .95
    assert kept(top_p_filter(x, 0.999)) == [0, 1, 2, 3, 4]
    assert kept(top_p_filter(x, 1.0)) == [0, 1, 2, 3, 4]
    assert kept(top_p_filter(x, 1e-6)) == [1]             # the best token always survives


def test_top_p_per_row():
    x = torch.cat([logits_of([0.6, 0.3, 0.1]), logits_of([0.1, 0.3, 0.6])])
    out = top_p_filter(x, torch.tensor([0.5, 0.8]))
    assert torch.isfinite(out).tolist() == [[True, False, False], [False, True, True]]


def test_top_k_per_row_and_off():
    x = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 4.0, 3.0, 2.0]])
    out = top_k_filter(x, torch.tensor([2, 0]))           # row 1: 0 = off
    assert torch.isfinite(out).tolist() == [[False, True, True, False], [True] * 4]
    assert torch.isfinite(top_k_filter(x, 1)).sum(1).tolist() == [1, 1]
    assert torch.equal(top_k_filter(x, None), x) and torch.equal(top_k_filter(x, 10), x)


def test_greedy_and_logprob_is_raw_log_softmax():
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    tok, lp = sample(x, temperature=0.0)
    assert torch.equal(tok, x.argmax(-1))
    assert torch.allclose(lp, x.log_softmax(-1).gather(1, tok[:, None]).squeeze(1))
    # logprobs stay those of the model even when sampling is filtered/tempered
    tok, lp = sample(x, temperature=0.5, top_k=3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(lp, x.log_softmax(-1).gather(1, tok[:, None]).squeeze(1))


def test_top_k_1_is_greedy_at_any_temperature():
    x = torch.randn(8, 100, generator=torch.Generator().manual_seed(2))
    for seed in range(5):
        tok, _ = sample(x, temperature=2.0, top_k=1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(tok, x.argmax(-1))


def test_seed_determinism_and_variation():
    x = torch.zeros(1, 1000)                               # uniform: draws depend only on the seed
    draw = lambda s: [int(sample(x, generator=g)[0]) for g in [torch.Generator().manual_seed(s)] for _ in range(20)]
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampling_frequencies_follow_temperature():
    x = logits_of([0.7, 0.2, 0.1]).expand(20000, -1)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(sample(x, generator=g)[0], minlength=3) / 20000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015)
    # T=0.5 squares the probabilities (then renormalises): .49/.54, .04/.54, .01/.54
    freq = torch.bincount(sample(x, temperature=0.5, generator=g)[0], minlength=3) / 20000
    assert torch.allclose(freq, torch.tensor([0.49, 0.04, 0.01]) / 0.54, atol=0.015)


def test_per_row_temperature_and_generators():
    x = torch.randn(3, 30, generator=torch.Generator().manual_seed(3))
    gens = [torch.Generator().manual_seed(5), None, torch.Generator().manual_seed(5)]
    tok, _ = sample(x, temperature=torch.tensor([1.0, 0.0, 1.0]), generator=gens)
    assert int(tok[1]) == int(x[1].argmax())
    # a row's draw depends only on its own generator, not on what it is batched with
    alone, _ = sample(x[2:], generator=torch.Generator().manual_seed(5))
    assert int(tok[2]) == int(alone[0])
