"""Spread, unequal-probability samples of the QC's lattice (costack.registration.sampling)."""

import numpy as np
import pytest

from costack.registration.sampling import (
    hilbert_index,
    inclusion_probabilities,
    spread_sample,
    weighted_quantile,
)


def test_hilbert_index_visits_every_cell_once_between_neighbours():
    """The curve through a 16 x 16 square: a permutation of 0..255 whose consecutive cells
    are 4-neighbours (what makes a systematic sample along it spread)."""
    r, c = np.mgrid[0:16, 0:16]
    d = hilbert_index(r.ravel(), c.ravel(), 4)
    assert sorted(d) == list(range(256))
    order = np.argsort(d)
    steps = np.abs(np.diff(r.ravel()[order])) + np.abs(np.diff(c.ravel()[order]))
    assert (steps == 1).all()


def test_inclusion_probabilities_sum_to_the_size_and_cap_at_one():
    w = np.array([100.0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    pi = inclusion_probabilities(w, 4)
    assert pi.sum() == pytest.approx(4)
    assert pi[0] == 1.0 and np.allclose(pi[1:], 3 / 9)


def test_spread_sample_covers_the_area_and_follows_the_weights():
    """1000 of a 100 x 100 lattice: exactly 1000 points, 250 (+-5) in each quadrant under
    equal weights (simple random sampling would miss by about 14); with weight 4 on the right
    half, 4/5 of them there, and 1 / pi weights the sample back to the lattice's mean."""
    r, c = np.mgrid[0:100, 0:100]
    r, c = r.ravel(), c.ravel()
    idx, pi = spread_sample(r, c, np.ones(r.size), 1000, seed=1)
    assert len(idx) == 1000 and len(set(idx)) == 1000
    for top in (True, False):
        for left in (True, False):
            inq = ((r[idx] < 50) == top) & ((c[idx] < 50) == left)
            assert abs(inq.sum() - 250) <= 5
    w = np.where(c >= 50, 4.0, 1.0)
    idx, pi = spread_sample(r, c, w, 1000, seed=2)
    assert abs((c[idx] >= 50).sum() - 800) <= 10
    value = c.astype(float)  # the lattice mean is 49.5
    assert np.average(value[idx], weights=1 / pi) == pytest.approx(49.5, abs=1.0)
    assert value[idx].mean() > 60  # unweighted, the sample is biased to the right


def test_weighted_quantile_with_equal_weights_is_numpys_percentile():
    rng = np.random.default_rng(0)
    v = rng.random(37)
    for q in (0.1, 0.5, 0.9):
        assert weighted_quantile(v, np.full(37, 2.5), q) == pytest.approx(np.percentile(v, 100 * q))
    # heavier points pull the quantile towards them
    assert weighted_quantile(np.array([1.0, 2.0, 3.0]), np.array([5.0, 1.0, 1.0]), 0.5) < 2.0
