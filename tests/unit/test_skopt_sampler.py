"""Embedded `bayesianoptimization`: scikit-optimize's GP optimizer behind Optuna's sampler interface, run
with real Optuna and real skopt on objectives whose optimum is known."""

from __future__ import annotations

import optuna
import pytest

from mlcd.adapters import optuna_tuner
from mlcd.adapters.skopt_sampler import SkoptSampler
from mlcd.policy.schema import Tuning

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _tuning(**overrides: object) -> Tuning:
    return Tuning.model_validate(
        {
            "objective": {"metric": "accuracy", "type": "maximize"},
            "algorithm": "bayesianoptimization",
            "parameters": [
                {"name": "n_estimators", "type": "int", "min": 10, "max": 200, "step": 10},
                {"name": "learning_rate", "type": "double", "min": 0.001, "max": 1.0},
                {"name": "criterion", "type": "categorical", "values": ["gini", "entropy"]},
            ],
            "max_trials": 12,
            **overrides,
        }
    )


def _objective(trial: optuna.Trial, space: dict[str, object]) -> float:
    params = {name: trial._suggest(name, distribution) for name, distribution in space.items()}  # type: ignore[arg-type]
    bonus = 0.2 if params["criterion"] == "entropy" else 0.0
    return -(((params["n_estimators"] - 120) / 100) ** 2) - (params["learning_rate"] - 0.3) ** 2 + bonus


def test_the_policys_bayesianoptimization_is_the_skopt_gp_sampler_and_stays_in_the_space() -> None:
    tuning = _tuning()
    sampler = optuna_tuner.sampler(tuning, seed=7)
    assert isinstance(sampler, SkoptSampler)
    space = {p.name: optuna_tuner.distribution(p) for p in tuning.parameters}
    study = optuna.create_study(direction="maximize", sampler=sampler)

    study.optimize(lambda t: _objective(t, space), n_trials=20)

    for trial in study.trials:  # Optuna itself refuses an assignment outside its distribution
        assert trial.params["n_estimators"] % 10 == 0 and 10 <= trial.params["n_estimators"] <= 200
        assert 0.001 <= trial.params["learning_rate"] <= 1.0
    assert study.best_params["criterion"] == "entropy"
    assert (
        abs(study.best_params["n_estimators"] - 120) <= 30
        and abs(study.best_params["learning_rate"] - 0.3) < 0.2
    )


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_after_the_initial_points_the_gp_model_beats_random_search(direction: str) -> None:
    """Same budget, same seeds: the GP-guided search ends nearer the optimum than random sampling."""
    sign = 1.0 if direction == "maximize" else -1.0

    def best_distance(sampler: optuna.samplers.BaseSampler) -> float:
        study = optuna.create_study(direction=direction, sampler=sampler)
        study.optimize(lambda t: sign * -((t.suggest_float("x", -5.0, 5.0) - 1.234) ** 2), n_trials=12)
        return abs(study.best_params["x"] - 1.234)

    guided = [best_distance(SkoptSampler(seed=seed, n_initial_points=4)) for seed in range(2)]
    random = [best_distance(optuna.samplers.RandomSampler(seed=seed)) for seed in range(2)]
    assert sum(guided) < sum(random), (guided, random)
