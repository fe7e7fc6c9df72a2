import math

import pytest

from masa.advantages import group_advantages


def test_hand_computed_group():
    # rewards 1, 0, 0, 1: mean 0.5, sample std sqrt(1/3)
    out = group_advantages([[1.0, 0.0, 0.0, 1.0]], eps=0.0)
    std = math.sqrt(1 / 3)
    assert out.advantages[0] == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert out.zero_variance == [False]


def test_zero_variance_groups_get_zero_and_are_counted():
    out = group_advantages([[1.0, 1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    assert out.advantages[0] == [0.0, 0.0, 0.0]
    assert out.advantages[1] == [0.0, 0.0]
    assert out.zero_variance == [True, True, False]


def test_groups_of_different_sizes_are_normalised_separately():
    out = group_advantages([[0.0, 1.0], [0.2, 0.4, 0.6]], eps=0.0)
    assert sum(out.advantages[0]) == pytest.approx(0.0)
    assert out.advantages[1] == pytest.approx([-1.0, 0.0, 1.0])


def test_unscaled_advantages_are_mean_centred():
    out = group_advantages([[1.0, 0.0, 0.0, 0.0]], scale=False)
    assert out.advantages[0] == pytest.approx([0.75, -0.25, -0.25, -0.25])
