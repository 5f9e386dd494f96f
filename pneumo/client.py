"""A small Python client of the pneumo service (`pneumo serve`): predict, explain, metadata.

    from pneumo.client import PneumoClient

    with PneumoClient("http://127.0.0.1:3000") as client:
        answer = client.predict("chest.jpeg")       # a path, or the file's bytes
        answer["probability"], answer["label"], answer["refer_to_radiologist"]

Files are sent as they are (the service identifies JPEG, PNG and DICOM from their bytes); every
refusal becomes a :class:`PneumoAPIError` with the service's code and message. The service's
own OpenAPI document is at /docs; ``bentoml.SyncHTTPClient`` works too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from pneumo.errors import PneumoError

DEFAULT_URL = "http://127.0.0.1:3000"
OCTET_STREAM = "application/octet-stream"
Image = str | Path | bytes


class PneumoAPIError(PneumoError):
    """The service refused a request or failed: ``status``, its ``code`` and its message."""

    def __init__(self, status: int, code: str, message: str, answer: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.answer = answer


class ServiceUnreachableError(PneumoError):
    """Nothing answers at the URL."""


def _content(image: Image) -> tuple[str, bytes]:
    """(file name, bytes) of a path or of raw bytes."""
    if isinstance(image, bytes):
        return "image", image
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the path of a JPEG, PNG or DICOM file")
    return path.name, path.read_bytes()


class PneumoClient:
    """The service's HTTP API as Python calls; one connection pool, closed by ``close()``."""

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> PneumoClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(
                f"no pneumo service answers at {self.url} ({exc}): start one with "
                "`pneumo serve` (or `make serve`), or pass its URL"
            ) from exc
        if response.is_success:
            return response
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        code = str(answer.get("code", f"http_{response.status_code}"))
        message = str(answer.get("error", response.reason_phrase))
        raise PneumoAPIError(response.status_code, code, message, answer)

    def predict(self, image: Image) -> dict[str, Any]:
        """Probability of pneumonia, label, threshold and referral flag for one radiograph."""
        _, data = _content(image)
        headers = {"content-type": OCTET_STREAM}
        return self._send("POST", "/predict", content=data, headers=headers).json()

    def predict_batch(self, images: Iterable[Image]) -> list[dict[str, Any]]:
        """One answer per radiograph, in order; nothing is predicted if any file is unusable."""
        files = [("images", (*_content(image), OCTET_STREAM)) for image in images]
        if not files:
            raise ValueError("predict_batch needs at least one image")
        return self._send("POST", "/predict_batch", files=files).json()["predictions"]

    def explain(self, image: Image, format: str = "png") -> bytes | dict[str, Any]:
        """Grad-CAM: the overlay PNG's bytes, or with ``format='json'`` the prediction and the
        heatmap (``'layers'``: the model's view and the heatmap as PNG data URLs)."""
        _, data = _content(image)
        headers = {"content-type": OCTET_STREAM}
        params = {"format": format}
        response = self._send("POST", "/explain", content=data, headers=headers, params=params)
        return response.content if format == "png" else response.json()

    def metadata(self) -> dict[str, Any]:
        """The served model, its decision threshold, test metrics and the service's limits."""
        return self._send("GET", "/metadata").json()

    def feedback(
        self, request_id: str, label: str, reviewer: str, note: str = "",
        patient_id: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """A reviewer's reading (NORMAL or PNEUMONIA) of an answer, by its ``request_id``;
        ``replaced`` in the answer says whether it replaced the reviewer's earlier one."""
        body = {"request_id": request_id, "label": label, "reviewer": reviewer, "note": note,
                "patient_id": patient_id}  # fmt: skip
        return self._send("POST", "/feedback", json=body).json()
