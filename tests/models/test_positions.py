"""lmforge.models.positions against the papers' formulas: RoPE's relative-position property, ALiBi's slopes and bias,
the sinusoidal table of Vaswani et al. 2017."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.models.positions import (
    alibi_bias,
    alibi_slopes,
    apply_rope,
    causal_mask,
    check_position,
    rope_cos_sin,
    sinusoidal_table,
)


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    cos, sin = rope_cos_sin(positions, x.size(-1), base)
    return apply_rope(x, cos, sin)


@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_rope_scores_depend_only_on_the_distance(base):
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
    scores = {}
    for m, n in ((5, 2), (105, 102), (1005, 1002), (3, 3), (40, 40)):
        qm = rotate(q.float(), torch.tensor([m]), base)
        kn = rotate(k.float(), torch.tensor([n]), base)
        scores[(m, n)] = (qm * kn).sum().item()
    assert scores[(5, 2)] == pytest.approx(scores[(105, 102)], rel=1e-4, abs=1e-4)
    assert scores[(5, 2)] == pytest.approx(scores[(1005, 1002)], rel=1e-3, abs=1e-3)
    assert scores[(3, 3)] == pytest.approx(scores[(40, 40)], rel=1e-4, abs=1e-4)
    assert scores[(3, 3)] == pytest.approx((q * k).sum().item(), rel=1e-4)  # distance 0: q.k unrotated
    assert scores[(5, 2)] != pytest.approx(scores[(3, 3)], rel=1e-3)  # the distance does matter


def test_rope_is_a_rotation_of_each_half_pair_by_position_times_frequency():
    """Dimension i (< d/2) and i + d/2 rotate together by angle p * base^(-2i/d): the complex-number form, in the
    rotate-half layout."""
    d, base, p = 8, 10000.0, 7
    x = torch.randn(1, 1, 1, d)
    out = rotate(x, torch.tensor([p]), base)[0, 0, 0]
    for i in range(d // 2):
        theta = p * base ** (-2 * i / d)
        z = complex(x[0, 0, 0, i].item(), x[0, 0, 0, i + d // 2].item()) * complex(math.cos(theta), math.sin(theta))
        assert out[i].item() == pytest.approx(z.real, abs=1e-5)
        assert out[i + d // 2].item() == pytest.approx(z.imag, abs=1e-5)
    assert out.norm().item() == pytest.approx(x.norm().item(), rel=1e-5)  # a rotation keeps the length


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_alibi_slopes_of_a_power_of_two_are_the_papers_geometric_sequence(n):
    assert alibi_slopes(n).tolist() == pytest.approx([2 ** (-8 * i / n) for i in range(1, n + 1)])


def test_alibi_slopes_for_8_heads_are_the_papers_example():
    assert alibi_slopes(8).tolist() == pytest.approx([1 / 2**i for i in range(1, 9)])  # section 3: 1/2 ... 1/256


def test_alibi_slopes_of_other_head_counts_interleave_the_next_power_of_two():
    # 12 heads: the 8-head slopes, then every other 16-head slope (2^-0.5, 2^-1.5, ...) for the 4 left
    expected = [2.0**-i for i in range(1, 9)] + [2.0 ** -(i - 0.5) for i in range(1, 5)]
    assert alibi_slopes(12).tolist() == pytest.approx(expected)
    assert alibi_slopes(6).tolist() == pytest.approx([2.0 ** (-2 * i) for i in range(1, 5)] + [2.0**-1, 2.0**-3])


def test_alibi_bias_is_minus_slope_times_distance():
    slopes = alibi_slopes(4)
    q, k = torch.arange(3, 6), torch.arange(6)  # 3 new queries over 6 keys (a cache of 3)
    bias = alibi_bias(slopes, q, k)
    assert bias.shape == (4, 3, 6)
    for h in range(4):
        for i, qp in enumerate(q.tolist()):
            for j, kp in enumerate(k.tolist()):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h].item() * (qp - kp))


def test_causal_mask_with_an_offset():
    mask = causal_mask(torch.arange(2, 4), torch.arange(4))
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_sinusoidal_table_is_the_papers_formula():
    d, positions = 10, torch.tensor([0, 1, 5, 99, 3000])
    table = sinusoidal_table(positions, d)
    assert table.shape == (5, d)
    for row, p in enumerate(positions.tolist()):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert table[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-4)
            assert table[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-4)


def test_choices_are_checked_with_the_key_named():
    with pytest.raises(ConfigError, match=r"model.net.position='rotary'.*learned, sinusoidal, rope, alibi, none"):
        check_position("rotary", 32, 8)
    with pytest.raises(ConfigError, match=r"position=rope.*head dim.*7.*odd"):
        check_position("rope", 28, 7)
    with pytest.raises(ConfigError, match=r"sinusoidal.*d_model=27"):
        check_position("sinusoidal", 27, 9)
    for position in ("learned", "alibi", "none"):
        check_position(position, 27, 9)  # odd sizes are fine where nothing pairs dimensions
