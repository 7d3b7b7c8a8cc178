"""How the local tuner proposes hyperparameters, without training anything."""
import math

import pytest

from backends.local.tuning import _Proposer

RANGES = {
    "ContinuousParameterRanges": [
        {"Name": "learning-rate", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}],
    "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "5", "ScalingType": "Linear"}],
    "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["32", "64"]}],
}


@pytest.mark.parametrize("strategy", ["Random", "Bayesian"])
def test_values_stay_in_their_ranges(strategy):
    proposer = _Proposer(RANGES, strategy, "Minimize", max_jobs=20, seed=1)
    for i in range(20):
        values = proposer.propose(i)
        assert 1e-4 <= float(values["learning-rate"]) <= 0.1
        assert values["epochs"] in {"1", "2", "3", "4", "5"} and values["batch-size"] in {"32", "64"}
        proposer.report(i, float(values["learning-rate"]) if i % 5 else math.nan)


def test_logarithmic_scaling_reaches_small_values():
    proposer = _Proposer(RANGES, "Random", "Minimize", max_jobs=40, seed=0)
    rates = [float(proposer.propose(i)["learning-rate"]) for i in range(40)]
    assert sum(r < 1e-3 for r in rates) >= 10  # a linear draw would put ~1% of them below 1e-3


def test_reverse_logarithmic_crowds_near_one():
    ranges = {"ContinuousParameterRanges": [
        {"Name": "learning-rate", "MinValue": "0.5", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"}]}
    proposer = _Proposer(ranges, "Random", "Minimize", max_jobs=40, seed=0)
    values = [float(proposer.propose(i)["learning-rate"]) for i in range(40)]
    assert all(0.5 <= v <= 0.999 for v in values) and sum(v > 0.9 for v in values) >= 20


def test_bayesian_learns_from_results():
    ranges = {"ContinuousParameterRanges": [{"Name": "learning-rate", "MinValue": "0", "MaxValue": "1"}]}
    proposer = _Proposer(ranges, "Bayesian", "Minimize", max_jobs=40, seed=0)
    values = []
    for i in range(40):
        x = float(proposer.propose(i)["learning-rate"])
        proposer.report(i, (x - 0.2) ** 2)
        values.append(x)
    late = values[-10:]
    assert sum(abs(x - 0.2) < 0.15 for x in late) >= 7  # TPE concentrates near the optimum


def test_grid_walks_every_combination_once():
    ranges = {"IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "2"}],
              "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["32", "64", "128"]}]}
    proposer = _Proposer(ranges, "Grid", "Maximize", max_jobs=100, seed=0)
    assert proposer.total == 6
    combos = {tuple(sorted(proposer.propose(i).items())) for i in range(6)}
    assert len(combos) == 6


def test_grid_refuses_continuous():
    with pytest.raises(ValueError, match="only integer and categorical"):
        _Proposer(RANGES, "Grid", "Minimize", 4, 0)
