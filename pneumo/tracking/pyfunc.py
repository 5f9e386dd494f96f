"""MLflow "model from code" entry point: uint8 images (N, S, S) in, pneumonia probabilities out.

MLflow copies this file next to the logged weights and runs it on load; the network class and the
preprocessing stay in the installed pneumo package, so nothing is pickled and a model loaded
through MLflow predicts exactly as :func:`pneumo.inference.predict_proba` does.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np

from pneumo.inference import predict_proba
from pneumo.models import load_model


class PneumoniaPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a pneumo model file (the ``model`` artifact)."""

    def load_context(self, context: Any) -> None:
        self.model, self.metadata = load_model(context.artifacts["model"])

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        images = np.asarray(model_input)
        if images.dtype != np.uint8:
            images = np.clip(images, 0, 255).astype(np.uint8)
        return predict_proba(self.model, images, tta=bool(self.metadata.get("tta", False)))


mlflow.models.set_model(PneumoniaPyfunc())
