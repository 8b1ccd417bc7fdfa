"""Katib's `bayesianoptimization` on the embedded default: scikit-optimize's Gaussian-process optimizer.

Katib serves that algorithm from its skopt suggestion service (`pkg/suggestion/v1beta1/skopt`): an
`skopt.Optimizer` with a GP base estimator, told every finished trial and asked for the next assignments.
This is the same optimizer behind Optuna's sampler interface, so the embedded tuner's study, warm start and
trial loop stay as they are for every algorithm. (Optuna's own GPSampler needs PyTorch; skopt needs only
scikit-learn, which mlcd already has.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

N_INITIAL_POINTS = 10  # Katib's skopt service default: random points before the GP model guides the search


class SkoptSampler(optuna.samplers.BaseSampler):
    """Each trial's assignments from `skopt.Optimizer(base_estimator="GP")` fitted to the finished trials."""

    def __init__(self, seed: int, n_initial_points: int = N_INITIAL_POINTS) -> None:
        self._seed = seed
        self._n_initial_points = n_initial_points
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False))

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        import skopt

        names = sorted(search_space)
        optimizer = skopt.Optimizer(
            [_dimension(search_space[name]) for name in names],
            base_estimator="GP",
            n_initial_points=self._n_initial_points,
            random_state=self._seed + len(study.get_trials(deepcopy=False)),
        )
        done = _finished(study, names)
        if done:
            sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0  # skopt minimises
            optimizer.tell(
                [[t.params[n] for n in names] for t in done], [sign * float(t.value or 0.0) for t in done]
            )
        point = optimizer.ask()
        return {name: _native(search_space[name], value) for name, value in zip(names, point, strict=True)}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


def _finished(study: optuna.Study, names: Sequence[str]) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in trials if t.value is not None and all(n in t.params for n in names)]


def _dimension(distribution: BaseDistribution) -> Any:
    """The skopt dimension Katib's skopt service builds for the same parameter (int, double, categorical)."""
    from skopt.space import Categorical, Integer, Real

    if isinstance(distribution, IntDistribution):
        return Integer(
            distribution.low, distribution.high, prior="log-uniform" if distribution.log else "uniform"
        )
    if isinstance(distribution, FloatDistribution):
        return Real(
            distribution.low, distribution.high, prior="log-uniform" if distribution.log else "uniform"
        )
    if isinstance(distribution, CategoricalDistribution):
        return Categorical(list(distribution.choices))
    raise TypeError(f"no skopt dimension for {type(distribution).__name__}")


def _native(distribution: BaseDistribution, value: Any) -> Any:
    """skopt's numpy value as the distribution's own type, on its step (Optuna refuses a value off it)."""
    if isinstance(distribution, IntDistribution):
        steps = round((int(value) - distribution.low) / distribution.step)
        return min(distribution.high, distribution.low + steps * distribution.step)
    if isinstance(distribution, FloatDistribution):
        if distribution.step is None:
            return float(value)
        steps = round((float(value) - distribution.low) / distribution.step)
        return min(distribution.high, distribution.low + steps * distribution.step)
    assert isinstance(distribution, CategoricalDistribution)
    return next(choice for choice in distribution.choices if choice == value or str(choice) == str(value))
