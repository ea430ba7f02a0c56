import numpy as np
import pytest

from tsmeta.evaluation import event_scores, mase, pr_auc, smape


def test_smape_and_mase_follow_the_m4_definitions():
    actual = np.array([[10.0, 20.0], [1.0, 1.0]])
    fc = np.array([[12.0, 20.0], [0.0, 1.0]])
    # 200/h * sum |y-f| / (|y|+|f|)
    np.testing.assert_allclose(smape(actual, fc), [100 * 2 / 22, 100 * 1 / 1])
    insample = [np.arange(30.0), np.tile([0.0, 2.0], 15)]
    # seasonal naive MAE with m=2: 2 for the ramp, 0 for the alternation (undefined)
    np.testing.assert_allclose(mase(actual[:1], fc[:1], insample[:1], 2), [1.0 / 2])
    with pytest.raises(ValueError, match="undefined"):
        mase(actual, fc, insample, 2)


def test_event_scores_count_runs_and_events():
    event = np.full((2, 10), -1)
    event[0, 2:5] = 0  # a 3-point event, hit once
    event[1, 7] = 1  # a 1-point event, missed
    flag = np.zeros((2, 10), dtype=bool)
    flag[0, 3:6] = True  # one run touching event 0
    flag[1, 0] = flag[1, 2] = True  # two false runs
    res = event_scores(flag, event)
    assert res["detections"] == 3 and res["events"] == 2
    assert res["precision"] == pytest.approx(1 / 3) and res["recall"] == 0.5
    assert res["f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    observed = np.ones_like(flag)
    observed[1, 7] = False  # the missed event was never observed: not counted
    assert event_scores(flag, event, observed)["recall"] == 1.0


def test_pr_auc_perfect_random_and_ties():
    label = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    assert pr_auc(np.array([6, 5, 4, 3, 2, 1.0]), label) == 1.0
    assert pr_auc(np.array([1, 2, 3, 4, 5, 6.0]), label) == pytest.approx((1 / 5 + 2 / 6) / 2)
    # all tied: positives are ranked last (no credit for saturated scores)
    assert pr_auc(np.ones(6), label) == pytest.approx((1 / 5 + 2 / 6) / 2)
    assert np.isnan(pr_auc(np.ones(3), np.zeros(3, dtype=bool)))
