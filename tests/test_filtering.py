import math

import numpy as np
import pytest

from toolformer.annotate.filtering import filter_call, loss_weights, weighted_loss


def test_weights_are_the_papers():
    w = loss_weights()
    assert w == pytest.approx([1 / 3, 0.8 / 3, 0.6 / 3, 0.4 / 3, 0.2 / 3])
    assert w.sum() == pytest.approx(1.0)


# A hand-made table of log p(x_j | prefix, x_<j) for a 7-token text under the three prefixes.
LP_NONE = np.log([0.5, 0.1, 0.2, 0.25, 0.5, 0.8, 0.9])
LP_CALL_ONLY = np.log([0.5, 0.1, 0.25, 0.25, 0.5, 0.8, 0.9])
LP_CALL_RESULT = np.log([0.5, 0.1, 0.9, 0.5, 0.5, 0.8, 0.9])


def test_weighted_loss_by_hand():
    # i = 2: t = 0..4 covers x_2..x_6
    expected = -(1.0 * math.log(0.2) + 0.8 * math.log(0.25) + 0.6 * math.log(0.5) + 0.4 * math.log(0.8)
                 + 0.2 * math.log(0.9)) / 3
    assert weighted_loss(LP_NONE, 2) == pytest.approx(expected)
    # near the end only the terms that exist count: i = 5 covers x_5, x_6
    assert weighted_loss(LP_NONE, 5) == pytest.approx(-(math.log(0.8) + 0.8 * math.log(0.9)) / 3)


def test_l_plus_minus_and_filter():
    i = 2
    l_none, l_only, l_res = (weighted_loss(a, i) for a in (LP_NONE, LP_CALL_ONLY, LP_CALL_RESULT))
    # L- = min(L(ε), L(e(c,ε))): the call alone helps a bit, the result much more
    by_hand_minus = -(math.log(0.25) + 0.8 * math.log(0.25) + 0.6 * math.log(0.5) + 0.4 * math.log(0.8)
                      + 0.2 * math.log(0.9)) / 3
    by_hand_plus = -(math.log(0.9) + 0.8 * math.log(0.5) + 0.6 * math.log(0.5) + 0.4 * math.log(0.8)
                     + 0.2 * math.log(0.9)) / 3
    gain, kept = filter_call(l_none, l_only, l_res, tau_f=0.5)
    assert min(l_none, l_only) == pytest.approx(by_hand_minus)
    assert gain == pytest.approx(by_hand_minus - by_hand_plus)
    assert gain == pytest.approx((math.log(0.9 / 0.25) + 0.8 * math.log(0.5 / 0.25)) / 3)  # 0.612
    assert kept
    assert not filter_call(l_none, l_only, l_res, tau_f=1.0)[1]
    # a call that only helps without its result is not kept: L- uses the better of the two baselines
    assert filter_call(2.0, 0.5, 1.0, tau_f=0.1) == (pytest.approx(-0.5), False)
    # kept at exactly τf
    assert filter_call(2.0, 3.0, 1.0, tau_f=1.0) == (1.0, True)
