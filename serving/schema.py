"""What the public API accepts and answers: BentoML input specs, answer models and error codes.

One source for BentoML's /schema.json (what ``bentoml.SyncHTTPClient`` reads), the OpenAPI
document at /docs.json (serving/openapi.py) and the typed endpoints of serving/service.py.

The input specs declare a file field, so BentoML's clients send a multipart form, but they never
parse the body: ``from_http_request`` hands the route the request as it came
(:class:`Incoming`), and serving/uploads.py reads it under ``serve.*`` limits. BentoML's own
parsing would read any body in full and fetch a URL sent in place of a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import bentoml
from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema
from starlette.requests import Request

from pneumo.data.kermany import CLASSES
from serving.uploads import MULTIPART

IMAGE_TYPES = ("image/jpeg", "image/png", "application/dicom", "application/octet-stream")


@dataclass(frozen=True)
class Incoming:
    """A request whose body nobody has read yet: the route reads it under its limits."""

    request: Request


class GuardedInput(bentoml.IODescriptor):
    """An input spec that describes its file fields but leaves the body to the route."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    media_type: ClassVar[str | None] = MULTIPART

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> GuardedInput:
        return cls.model_construct(**{name: Incoming(request) for name in cls.model_fields})


def _file(description: str) -> Any:
    return WithJsonSchema({"type": "file", "format": "binary", "description": description})


class RadiographInput(GuardedInput):
    """One chest radiograph: JPEG, PNG or DICOM."""

    image: Annotated[
        Incoming,
        _file(
            "the radiograph: the raw body with its own content type, or the one file of a "
            "multipart form"
        ),
    ]


class RadiographsInput(GuardedInput):
    """Several chest radiographs in one multipart form, one file field each."""

    images: Annotated[
        Incoming,
        WithJsonSchema(
            {
                "type": "array",
                "items": {"type": "file", "format": "binary"},
                "description": "the radiographs, one file field each (up to serve.max_batch_files)",
            }
        ),
    ]


class ModelInfo(BaseModel):
    """Which model answered."""

    name: str = Field(examples=["pneumo-cnn"])
    version: str = Field(examples=["v3-1a2b3c4d"])
    mlflow_version: str | None = Field(None, examples=["3"])
    run_id: str | None = None
    source: str | None = Field(None, examples=["registry"])
    arch: str | None = Field(None, examples=["resnet"])
    sha256: str | None = Field(
        None, description="the served model's digest: sha256 of its weights, decision and guard"
    )
    weights_sha256: str | None = Field(
        None, description="sha256 of the weights file alone (the registry's model_sha256 tag)"
    )


class InputInfo(BaseModel):
    format: Literal["JPEG", "PNG", "DICOM"]
    width: int = Field(examples=[1858])
    height: int = Field(examples=[1588])


class Prediction(BaseModel):
    """The model's call on one radiograph."""

    model_config = ConfigDict(extra="allow")

    request_id: str | None = Field(
        None,
        description="this answer's id in the prediction log (also X-Request-Id): send it "
        "with POST /feedback",
        examples=["5f0c3b1e9a8d4c2fb7e6a1d0c9b8a7f6"],
    )
    probability: float = Field(ge=0, le=1, description="probability of pneumonia")
    label: Literal[CLASSES] = Field(description="the call at the decision threshold")
    threshold: float = Field(description="the validation-chosen decision threshold")
    refer_to_radiologist: bool = Field(
        description="a close call (within the referral band) or an out-of-distribution image"
    )
    referral_band: list[float] = Field(min_length=2, max_length=2, examples=[[0.44, 0.54]])
    input: InputInfo
    model: ModelInfo | None = Field(None, description="which model answered (/predict)")
    out_of_distribution: bool = Field(
        description="the image is unlike the paediatric chest radiographs the model was trained "
        "on (colour, odd aspect, uniform, or far from the training features): always referred"
    )
    ood_score: float | None = Field(
        description="the guard's outlier score (higher = stranger); null for a model without a guard"
    )
    ood_reason: str | None = Field(description="why the image is out of distribution, in words")


PREDICTION_EXAMPLE = {
    "request_id": "5f0c3b1e9a8d4c2fb7e6a1d0c9b8a7f6",
    "probability": 0.9731,
    "label": "PNEUMONIA",
    "threshold": 0.493,
    "refer_to_radiologist": False,
    "referral_band": [0.443, 0.543],
    "out_of_distribution": False,
    "ood_score": -0.21,  # the scope check's scale: validation median 0, cut-off about 1
    "ood_reason": None,
    "input": {"format": "JPEG", "width": 1858, "height": 1588},
    "model": {"name": "pneumo-cnn", "version": "v3-1a2b3c4d", "source": "registry"},
}


class FilePrediction(Prediction):
    index: int = Field(description="position of the file in the form")
    filename: str | None = Field(description="the file's name, without folders")


class BatchPrediction(BaseModel):
    """One prediction per file, in the order of the form."""

    request_id: str = Field(
        description="the batch's id (X-Request-Id); each file's is <id>-<index>"
    )
    predictions: list[FilePrediction]
    model: ModelInfo


class Explanation(Prediction):
    """``?format=json``: the prediction and its Grad-CAM heatmap at the model's resolution."""

    heatmap: list[list[float]] = Field(description="Grad-CAM in [0, 1], rows of the model's view")
    heatmap_shape: list[int] = Field(examples=[[128, 128]])


class ExplanationLayers(Prediction):
    """``?format=layers`` (the web page): the model's view and the heatmap as PNG data URLs."""

    image: str = Field(description="the model's view: grayscale, stretched to its square")
    heatmap: str = Field(description="the Grad-CAM colours, same geometry as image")


class OverlayPng(RootModel[bytes]):
    """``?format=png`` (default): the Grad-CAM overlaid on the model's view."""

    media_type: ClassVar[str] = "image/png"
    root: Annotated[bytes, WithJsonSchema({"type": "string", "format": "binary"})]


class Limits(BaseModel):
    max_request_bytes: int
    max_pixels: int
    min_side: int
    max_batch_files: int


class NetworkInfo(BaseModel):
    """What computes the network: the runtime and the precision it chose at start-up."""

    runtime: str | None = Field(examples=["openvino"], description="torch, openvino or onnxruntime")
    precision: str | None = Field(
        examples=["bf16"],
        description="fp32, or bf16 where the model's precision evidence and the CPU allow it",
    )
    description: str | None = Field(examples=["openvino bf16, 2 threads (+ features)"])
    unavailable: str | None = Field(None, description="why the model workers did not say")


class Metadata(BaseModel):
    """The served model, its threshold, test metrics and the service's limits."""

    model: ModelInfo
    network: NetworkInfo
    threshold: float
    referral_band: list[float] = Field(min_length=2, max_length=2)
    image_size: int = Field(description="the side of the square the model sees")
    metrics: dict[str, Any] = Field(description="the packaged evaluation report")
    limits: Limits
    accepts: list[str]
    monitoring: dict[str, Any] = Field(
        description="the prediction log: rows logged, buffered while the store was down, "
        "replayed, lost (also on /metrics as pneumo_prediction_log_rows_total)"
    )


def _enum(values: tuple[str, ...], description: str) -> Any:
    return WithJsonSchema({"type": "string", "enum": list(values), "description": description})


class FeedbackInput(BaseModel):
    """A reviewer's reading of an answered radiograph, joined to it by request id.

    ``label`` is checked by the route (422 ``invalid_label``), not by BentoML, so that a wrong
    value gets the service's own error format and status.
    """

    request_id: str = Field(description="the request_id of a /predict, /predict_batch or "
                            "/explain answer", examples=[PREDICTION_EXAMPLE["request_id"]])  # fmt: skip
    label: Annotated[str, _enum(CLASSES, "the reviewer's reading")] = Field(examples=["NORMAL"])
    reviewer: str = Field(description="who reviewed; one feedback per reviewer and request",
                          examples=["dr.okafor"])  # fmt: skip
    note: str = Field("", description="free text, at most 2000 characters")
    patient_id: str | None = Field(
        None,
        description="the site's pseudonymous patient id: keeps a patient's images in one "
        "split when confirmed cases are trained on (`pneumo feedback export`)",
    )


class FeedbackAnswer(BaseModel):
    """What was recorded: 201 for a new feedback, 200 when it replaced the reviewer's earlier one."""

    request_id: str
    label: Literal[CLASSES]
    reviewer: str
    predicted_label: Literal[CLASSES] = Field(description="the model's call on that request")
    agrees_with_model: bool
    replaced: bool = Field(description="the same reviewer had sent feedback before: replaced")
    previous_label: Literal[CLASSES] | None
    message: str = Field(examples=["replaced dr.okafor's earlier feedback (PNEUMONIA -> NORMAL)"])


FEEDBACK_EXAMPLE = {
    "request_id": PREDICTION_EXAMPLE["request_id"],
    "label": "NORMAL",
    "reviewer": "dr.okafor",
    "predicted_label": "PNEUMONIA",
    "agrees_with_model": False,
    "replaced": False,
    "previous_label": None,
    "message": "recorded dr.okafor's feedback",
}


class ErrorAnswer(BaseModel):
    """Every refusal and fault: a message that says what to do, and a stable code."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(examples=["the request body is 25000000 bytes, above 20000000"])
    code: str = Field(examples=["body_too_large"])
    files: list[dict[str, Any]] | None = Field(
        None, description="/predict_batch: each unusable file with its index, status and code"
    )


# Each answer code a route can give besides 200, by HTTP status. tests/serving check that every
# code raised in serving/ is listed here.
UPLOAD_ERRORS: dict[int, dict[str, str]] = {
    400: {
        "invalid_content_length": "the Content-Length header is not a number",
        "invalid_multipart": "the multipart form is malformed (or has too many files)",
        "no_file": "the form holds no file",
        "empty_body": "the body is empty",
        "invalid_image": "the JPEG or PNG header cannot be read",
        "corrupt_image": "the file is damaged or truncated: never predicted",
        "invalid_dicom": "the DICOM file cannot be read (damaged, or no 'DICM' marker after its "
        "128-byte preamble)",
    },
    408: {"body_timeout": "the body did not arrive within serve.read_timeout_s"},
    413: {
        "body_too_large": "the body is above serve.max_request_bytes (refused while streaming)",
        "too_many_pixels": "the header announces more than serve.max_pixels",
        "image_too_large": "the decoded image would be too large",
    },
    411: {"length_required": "a body with neither Content-Length nor chunked transfer coding"},
    415: {
        "unsupported_media_type": "a content type that cannot carry a radiograph",
        "unsupported_format": "the bytes are not a JPEG, PNG or DICOM file, or a JPEG kind no "
        "radiograph uses (lossless, hierarchical or arithmetic-coded)",
        "content_type_mismatch": "the declared content type is not the file's format",
    },
    422: {
        "image_too_small": "a side is below serve.min_side",
        "unsupported_dicom": "a DICOM kind pneumo cannot read (colour, multi-frame, deflated, ...)",
    },
    431: {"headers_too_large": "the request headers are above serve.max_header_bytes together"},
    501: {"unsupported_transfer_coding": "a transfer coding other than plain chunked (e.g. gzip)"},
    503: {
        "overloaded": "every upload or request slot is taken: retry after Retry-After",
        "model_unavailable": "the model service is restarting or busy: retry",
    },
    500: {"internal_error": "a bug, logged by the service; the answer holds no details"},
}
# Any POST route: serving/deadline.py's answer when nothing started within traffic.timeout.
DEADLINE_ERRORS = {504: {"timeout": "no answer started within the service's traffic.timeout"}}
# The status every bad file shares, else 400.
BATCH_ERRORS = {
    status: {"invalid_files": "files cannot be used (listed in files); nothing was predicted"}
    for status in (400, 413, 415, 422)
}
EXPLAIN_ERRORS = {400: {"invalid_format": "format is not png, json or layers"}}
FEEDBACK_ERRORS: dict[int, dict[str, str]] = {
    400: {"bad_request": "the body is not a JSON object with the required fields"},
    404: {"unknown_request": "no answered prediction has this request id"},
    409: {"monitoring_disabled": "the prediction log is off (monitor.enabled: false)"},
    422: {
        "invalid_label": "label is not NORMAL or PNEUMONIA",
        "invalid_request_id": "request_id is empty or longer than 64 characters",
        "invalid_reviewer": "reviewer is empty or longer than 128 characters",
        "invalid_feedback": "note or patient_id is too long",
    },
    503: {"store_unavailable": "the prediction store cannot be reached: retry shortly"},
    500: {"internal_error": "a bug, logged by the service; the answer holds no details"},
}
