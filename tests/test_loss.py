import math

import pytest
import torch

from masa.update import TrainSequence, clipped_policy_loss, pack


def _loss(logp, old, adv, mask, normaliser=None, **kw):
    mask = torch.tensor(mask, dtype=torch.float32)
    return clipped_policy_loss(
        torch.tensor(logp),
        torch.tensor(old),
        torch.tensor(adv),
        mask,
        clip_low=0.2,
        clip_high=0.28,
        normaliser=float(mask.sum()) if normaliser is None else normaliser,
        **kw,
    )


def test_ratio_one_gives_minus_token_mean_advantage():
    loss, stats = _loss([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [2.0, -1.0], [[1, 1], [1, 0]])
    # tokens: 2, 2, -1 -> loss = -(2 + 2 - 1) / 3
    assert float(loss) == pytest.approx(-1.0)
    assert stats.clip_low_fraction == 0 and stats.clip_high_fraction == 0


def test_positive_advantage_clipped_at_one_plus_clip_high():
    ratio = 1.5
    loss, stats = _loss([[math.log(ratio)]], [[0.0]], [1.0], [[1]])
    assert float(loss) == pytest.approx(-1.28)
    assert stats.clip_high_fraction == 1.0


def test_positive_advantage_below_range_is_not_clipped():
    # pessimistic bound: for A > 0 and ratio < 1 - eps_low the unclipped term is the max
    loss, _ = _loss([[math.log(0.5)]], [[0.0]], [1.0], [[1]])
    assert float(loss) == pytest.approx(-0.5)


def test_negative_advantage_clipped_at_one_minus_clip_low():
    loss, stats = _loss([[math.log(0.5)]], [[0.0]], [-1.0], [[1]])
    assert float(loss) == pytest.approx(0.8)
    assert stats.clip_low_fraction == 1.0


def test_negative_advantage_above_range_is_not_clipped():
    loss, _ = _loss([[math.log(2.0)]], [[0.0]], [-1.0], [[1]])
    assert float(loss) == pytest.approx(2.0)


def test_padding_is_masked_and_normaliser_is_global():
    # the padded token has a huge ratio; it must not count. Normaliser 4 (the whole optimiser batch).
    loss, _ = _loss([[0.0, 5.0]], [[0.0, 0.0]], [1.0], [[1, 0]], normaliser=4.0)
    assert float(loss) == pytest.approx(-0.25)


def test_gradient_matches_policy_gradient_at_ratio_one():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = clipped_policy_loss(
        logp,
        logp.detach(),
        torch.tensor([3.0]),
        torch.ones(1, 2),
        clip_low=0.2,
        clip_high=0.28,
        normaliser=2.0,
    )
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-1.5, -1.5])


def test_token_weights_scale_the_loss():
    loss, _ = _loss([[0.0]], [[0.0]], [1.0], [[1]], token_weights=torch.tensor([0.5]))
    assert float(loss) == pytest.approx(-0.5)


def test_kl_penalty_is_zero_at_reference_and_positive_elsewhere():
    same, _ = _loss([[-1.0]], [[-1.0]], [0.0], [[1]], ref_logprobs=torch.tensor([[-1.0]]), kl_coef=0.1)
    apart, stats = _loss([[-1.0]], [[-1.0]], [0.0], [[1]], ref_logprobs=torch.tensor([[-2.0]]), kl_coef=0.1)
    assert float(same) == pytest.approx(0.0)
    k3 = math.exp(-1) + 1 - 1
    assert float(apart) == pytest.approx(0.1 * k3)
    assert stats.ref_kl == pytest.approx(k3)


def test_pack_pads_prompts_left_and_completions_right():
    batch = pack([TrainSequence([5, 6, 7], [8], 1.0), TrainSequence([9], [10, 11, 12], -1.0)], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 0, 0], [0, 0, 9, 10, 11, 12]]
    assert batch.completion_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch.position_ids[1].tolist()[2:] == [0, 1, 2, 3]
    # Each row's advantage on every completion position (padding is masked by completion_mask).
    assert batch.advantages.tolist() == [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]


def test_per_token_advantages_reach_their_own_tokens():
    seq = TrainSequence([5], [8, 9, 10], 0.0, token_advantages=[1.0, 0.0, -2.0])
    batch = pack([seq], pad_id=0)
    assert batch.advantages.tolist() == [[1.0, 0.0, -2.0]]
    logp = torch.zeros(1, 3, requires_grad=True)
    loss, _ = clipped_policy_loss(
        logp,
        logp.detach(),
        batch.advantages,
        batch.completion_mask,
        clip_low=0.2,
        clip_high=0.28,
        normaliser=3.0,
    )
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-1 / 3, 0.0, 2 / 3])
    with pytest.raises(ValueError, match="token advantages"):
        pack([TrainSequence([5], [8, 9], 0.0, token_advantages=[1.0])], pad_id=0)
