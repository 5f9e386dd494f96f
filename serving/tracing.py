"""BentoML's tracing middleware, only where its spans can go somewhere.

BentoML 1.4 wraps every service app in OpenTelemetry's ASGI middleware whether tracing is
configured or not: per request a server span, one span per received body chunk and one per sent
message, attributes read from the headers. With no exporter (BentoML's default, ``tracing:
exporter_type`` unset) no span ever leaves the process, yet under 8 clients sending the
full-size originals that middleware took ~0.3 ms of the event loop's ~1.3 ms of CPU per
/predict, and the loop's time is time every request waits for. :func:`install` keeps it out of
the services BentoML builds while no exporter is configured; with one (a ``BENTOML_CONFIG``
file's ``services: {pneumonia-service: {tracing: {exporter_type: otlp | zipkin | jaeger |
in_memory, ...}}}``) the middleware is built as before, so traces still start here or continue
an upstream caller's ``traceparent``.

Without it, the log lines written during a request (BentoML's access log among them) carry no
``trace=`` suffix and answers no ``X-BentoML-Request-ID`` (both came from the unsent span's ids);
pneumo's own ``X-Request-Id`` is unchanged.
"""

from __future__ import annotations

from typing import Any

from _bentoml_impl.server import app as bentoml_app
from bentoml._internal.configuration.containers import BentoMLContainer
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

_ORIGINAL = "_pneumo_bentoml_middlewares"  # where install() keeps BentoML's own property
# What install() wraps: BentoML's property, also when this module is imported again.
BENTOML_MIDDLEWARES = getattr(
    bentoml_app.ServiceAppFactory, _ORIGINAL, bentoml_app.ServiceAppFactory.middlewares
)


def tracing_exporter() -> str | None:
    """BentoML's configured span exporter, None when spans have nowhere to go."""
    return BentoMLContainer.config.tracing.exporter_type.get() or None


def _middlewares(factory: Any) -> list[Any]:
    """BentoML's middleware list for a service app, without tracing when nothing exports it."""
    built = BENTOML_MIDDLEWARES.fget(factory)
    if tracing_exporter() is not None:
        return built
    return [m for m in built if m.cls is not OpenTelemetryMiddleware]


def install() -> None:
    """Service apps built from now on leave out the tracing middleware unless an exporter is
    configured (checked when each app is built, in its own server process)."""
    factory = bentoml_app.ServiceAppFactory
    setattr(factory, _ORIGINAL, BENTOML_MIDDLEWARES)
    factory.middlewares = property(_middlewares)
