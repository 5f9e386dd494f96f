"""The API documents itself: /docs.json describes every public route with schemas, examples and
each error code the service can answer, and real answers match the published schemas.

In-process (``to_asgi``); the Swagger UI page in a browser is in test_web_page.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from starlette.testclient import TestClient

from tests.serving.serving_samples import malformed_cases, request_kwargs
from tests.serving.serving_support import REPO, ServingLab

PUBLIC = {
    ("post", "/predict"),
    ("post", "/predict_batch"),
    ("post", "/explain"),
    ("get", "/metadata"),
    ("get", "/model_card"),
    ("post", "/feedback"),
    ("get", "/live"),
}
UPLOAD_ROUTES = ("/predict", "/predict_batch", "/explain")
ERROR_ROUTES = (*UPLOAD_ROUTES, "/feedback")
RAISED = re.compile(r'InputError\(\s*(\d{3}|statuses\.pop\(\)[^,]*),\s*"(\w+)"')


@pytest.fixture(scope="module")
def document(asgi_client: TestClient) -> dict[str, Any]:
    response = asgi_client.get("/docs.json")
    assert response.status_code == 200
    return response.json()


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A validator of ``schema`` that resolves the document's #/components references."""
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def _answer_schema(document: dict[str, Any], method: str, path: str, status: int) -> dict:
    response = document["paths"][path][method]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]


def test_every_public_route_is_documented_with_an_example(document: dict[str, Any]) -> None:
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert PUBLIC <= documented
    for method, path in PUBLIC:
        operation = document["paths"][path][method]
        assert operation.get("summary") or operation.get("description"), path
        answers = operation["responses"]
        assert "application/json" in answers.get("200", answers.get("201"))["content"]
    predict = document["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "application/dicom"} <= set(body)
    example = predict["responses"]["200"]["content"]["application/json"]["example"]
    _validator(document, _answer_schema(document, "post", "/predict", 200)).validate(example)
    explain = document["paths"]["/explain"]["post"]
    assert explain["parameters"][0]["name"] == "format"
    assert "image/png" in explain["responses"]["200"]["content"]
    assert "/livez" in document["paths"] and "/readyz" in document["paths"]  # BentoML's own


def test_every_error_code_raised_is_documented(document: dict[str, Any]) -> None:
    """Each InputError code in serving/ appears under the POST routes' error responses."""
    raised = {
        code
        for source in (REPO / "serving").glob("*.py")
        for _, code in RAISED.findall(source.read_text())
    }
    assert {"body_too_large", "corrupt_image", "invalid_files", "invalid_format"} <= raised
    assert {"unknown_request", "invalid_label", "store_unavailable"} <= raised
    documented: set[str] = set()
    for path in ERROR_ROUTES:
        for status, response in document["paths"][path]["post"]["responses"].items():
            if status in ("200", "201"):
                continue
            schema = response["content"]["application/json"]["schema"]
            documented |= set(schema["properties"]["code"]["enum"])
    assert raised <= documented, raised - documented
    assert {"overloaded", "model_unavailable", "internal_error"} <= documented


def test_real_answers_match_the_published_schemas(
    asgi_client: TestClient, document: dict[str, Any], jpeg_paths: list[Path]
) -> None:
    data = jpeg_paths[3].read_bytes()
    headers = {"content-type": "image/jpeg"}
    answers = {
        ("post", "/predict"): asgi_client.post("/predict", content=data, headers=headers),
        ("post", "/predict_batch"): asgi_client.post(
            "/predict_batch", files=[("images", (p.name, p.read_bytes())) for p in jpeg_paths[:2]]
        ),
        ("get", "/metadata"): asgi_client.get("/metadata"),
        ("get", "/model_card"): asgi_client.get("/model_card"),
    }
    for (method, path), response in answers.items():
        assert response.status_code == 200, response.text
        schema = _answer_schema(document, method, path, 200)
        _validator(document, schema).validate(response.json())
    for wanted in ("json", "layers"):
        response = asgi_client.post(f"/explain?format={wanted}", content=data, headers=headers)
        schema = _answer_schema(document, "post", "/explain", 200)
        _validator(document, schema).validate(response.json())


def test_refusals_carry_a_documented_code_for_their_status(
    asgi_client: TestClient, document: dict[str, Any], serving_lab: ServingLab, jpeg_paths
) -> None:
    serve = serving_lab.settings.serve
    jpeg = jpeg_paths[0].read_bytes()
    cases = malformed_cases(jpeg, serve.max_request_bytes, serve.max_batch_files)
    checked = 0
    for case in cases:
        path, method = case.path.split("?")[0], case.method.lower()
        if method not in document["paths"].get(path, {}):  # a wrong method or route: 404/405
            continue
        response = asgi_client.request(case.method, case.path, **request_kwargs(case))
        assert response.status_code == case.status, case.name
        schema = _answer_schema(document, method, path, case.status)
        _validator(document, schema).validate(response.json())
        checked += 1
    assert checked >= 20


def test_docs_page_and_typed_endpoints_are_served(asgi_client: TestClient) -> None:
    page = asgi_client.get("/docs")
    assert page.status_code == 200 and 'id="swagger-ui"' in page.text
    assert "http://" not in page.text and "https://" not in page.text
    for asset in re.findall(r'(?:src|href)="(/[^"]+)"', page.text):
        assert asgi_client.get(asset).status_code == 200, asset
    routes = {route["name"]: route for route in asgi_client.get("/schema.json").json()["routes"]}
    assert {"predict", "predict_batch", "explain"} <= set(routes)
    assert routes["predict"]["input"]["properties"]["image"]["type"] == "file"  # a form upload


def test_bentoml_own_refusal_of_a_typed_endpoint_is_in_our_format(asgi_client: TestClient) -> None:
    """BentoML refuses pickled bodies before our route runs; the answer is still {error, code}."""
    response = asgi_client.post(
        "/predict", content=b"\x80\x04.", headers={"content-type": "application/vnd.bentoml+pickle"}
    )
    assert response.status_code == 415
    assert response.json() == {
        "error": "application/vnd.bentoml+pickle is not allowed in main server",
        "code": "unsupported_media_type",
    }


def test_examples_are_the_served_models_answers(
    document: dict[str, Any], asgi_client: TestClient
) -> None:
    """The /predict example carries the served threshold, referral band and model, not a
    made-up one."""
    served = asgi_client.get("/metadata").json()
    predict = document["paths"]["/predict"]["post"]["responses"]["200"]["content"]
    example = predict["application/json"]["example"]
    assert example["threshold"] == pytest.approx(served["threshold"], abs=1e-4)
    assert example["referral_band"] == pytest.approx(served["referral_band"], abs=1e-4)
    assert example["model"]["version"] == served["model"]["version"]
    batch = document["paths"]["/predict_batch"]["post"]["responses"]["200"]["content"]
    assert batch["application/json"]["example"]["predictions"][0]["threshold"] == example["threshold"]
