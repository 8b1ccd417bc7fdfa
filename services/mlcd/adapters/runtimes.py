"""What the model server behind each `rollout.predictor.model_format` loads from an MLflow model folder.

mlcd serves registry versions, so the storage URI it writes is always an MLflow model folder (an MLmodel
file and the flavors' files). What each runtime reads from it was taken from the runtimes' own code:

- KServe picks the runtime (config/runtimes, `sortSupportedRuntimeByPriority`: the highest priority
  first). For protocol v2, mlcd's default for mlflow, sklearn and xgboost, that is `kserve-mlserver`
  (priority 2, above kserve-sklearnserver's and kserve-xgbserver's 1), with `MLSERVER_MODEL_IMPLEMENTATION`
  `mlserver_mlflow.MLflowRuntime`, `mlserver_sklearn.SKLearnModel` or `mlserver_xgboost.XGBoostModel`.
  Seldon Core 2 runs the same MLServer runtimes for the same requirements.
- MLServer's sklearn runtime `joblib.load`s the first of model.joblib, model.pickle, model.pkl in the
  folder; its xgboost runtime loads model.bst, model.json or model.ubj (`WELLKNOWN_MODEL_FILENAMES`).
  MLflow writes the sklearn flavor's `pickled_model` as model.pkl (pickle, cloudpickle) or model.skops,
  and the xgboost flavor's `data` as model.<model_format>: ubj by default, json or xgb when asked.
- TF Serving reads numbered SavedModel folders, TorchServe `model-store/*.mar` with
  `config/config.properties`, Triton (Seldon's server for tensorflow, pytorch and onnx) a model repository
  (`<model>/<n>/model.onnx`, …): an MLflow model folder is none of these, whatever its flavors.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlcd.ports import PYFUNC, Flavors


@dataclass(frozen=True)
class _Loads:
    flavor: str
    file_setting: str | None = None  # the flavor's MLmodel setting that names its model file
    files: tuple[str, ...] = ()  # the file names the runtime looks for

    def problem(self, flavors: Flavors) -> str | None:
        if self.flavor not in flavors:
            return f"needs the {self.flavor} flavor"
        if self.file_setting is None:
            return None
        file = flavors[self.flavor].get(self.file_setting)
        if file is None or str(file) in self.files:
            return None
        return f"loads {' or '.join(self.files)}, and the {self.flavor} flavor's model file is {file}"


_LOADS = {
    "mlflow": _Loads(PYFUNC),
    "sklearn": _Loads("sklearn", "pickled_model", ("model.joblib", "model.pickle", "model.pkl")),
    "xgboost": _Loads("xgboost", "data", ("model.bst", "model.json", "model.ubj")),
}
_OWN_LAYOUT = {
    "tensorflow": "TF Serving and Triton read numbered model folders (<n>/ holding a SavedModel)",
    "pytorch": "TorchServe reads model-store/*.mar with config/config.properties, Triton numbered folders",
    "onnx": "Triton reads a model repository (<model>/<n>/model.onnx)",
}


def flavor_problem(model_format: str, version: str, flavors: Flavors) -> str | None:
    """Why the runtime for `model_format` cannot load a version with these MLflow flavors; None when it
    can, when the flavors are unknown (no MLmodel file was read) or for triton (a model repository)."""
    if not flavors:
        return None
    fitting = " or ".join(f for f, loads in _LOADS.items() if loads.problem(flavors) is None)
    advice = (
        f"set rollout.predictor.model_format to {fitting}"
        if fitting
        else "log the model with a python_function flavor and serve it as mlflow"
    )
    described = f"version {version} is an MLflow model with flavors {', '.join(sorted(flavors))}"
    if model_format in _OWN_LAYOUT:
        return f"{described}; {_OWN_LAYOUT[model_format]}, not an MLflow model folder: {advice}"
    loads = _LOADS.get(model_format)
    problem = loads.problem(flavors) if loads is not None else None
    if problem is None:
        return None
    return f"{described}; the {model_format} runtime {problem}: {advice}"
