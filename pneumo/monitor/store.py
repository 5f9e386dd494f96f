"""The prediction store: predictions, clinicians' feedback and monitoring verdicts, in SQL.

A SQLAlchemy URL (``monitor.store_url``): an SQLite file in the workspace by default, or the
team's PostgreSQL server (the one MLflow uses), where the tables live in their own schema
(``monitor.store_schema``). ``PNEUMO_MONITOR_URL`` wins over params.yaml, as
``MLFLOW_TRACKING_URI`` does for tracking. Times are naive UTC.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from pneumo.errors import PneumoError
from pneumo.monitor.stats import STAT_COLUMNS

log = logging.getLogger(__name__)

URL_VARIABLE = "PNEUMO_MONITOR_URL"
CONNECT_TIMEOUT_S = 3

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=True),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False, index=True),
    sa.Column("site", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("mlflow_version", sa.String(32), nullable=True),
    sa.Column("model_sha256", sa.String(64), nullable=True),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("refer_to_radiologist", sa.Boolean, nullable=False),
    sa.Column("out_of_distribution", sa.Boolean, nullable=False),
    sa.Column("ood_score", sa.Float, nullable=True),
    sa.Column("ood_reason", sa.String(300), nullable=True),
    sa.Column("input_format", sa.String(8), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in STAT_COLUMNS),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("image_sha256", sa.String(64), nullable=False),
    sa.Column("image_kept", sa.Boolean, nullable=False),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("reviewer", sa.String(128), nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("patient_id", sa.String(128), nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("request_id", "reviewer", name="one_feedback_per_reviewer"),
)
verdicts = sa.Table(
    "verdicts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime, nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("window_start", sa.DateTime, nullable=False),
    sa.Column("window_end", sa.DateTime, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
)
PREDICTION_COLUMNS: tuple[str, ...] = tuple(c.name for c in predictions.columns)


class StoreUnavailableError(PneumoError):
    """The prediction store cannot be reached or written now (a transient failure)."""


class UnknownRequestError(PneumoError):
    """No prediction with this request id is in the store."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def resolve_url(url: str, root: Path) -> str:
    """``PNEUMO_MONITOR_URL`` or ``url``; a relative SQLite path is taken from ``root``, and a
    bare ``postgresql://`` gets the psycopg2 driver pneumo ships (SQLAlchemy 2.1 would pick
    psycopg 3)."""
    url = os.environ.get(URL_VARIABLE) or url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not Path(url[len(prefix) :]).is_absolute():
        return prefix + str((Path(root) / url[len(prefix) :]).resolve())
    if url.startswith("postgresql://"):
        return url.replace("postgresql://", "postgresql+psycopg2://", 1)
    return url


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


class PredictionStore:
    """The tables of one store; every call opens a pooled connection and closes it."""

    def __init__(self, url: str, schema: str = "pneumo_monitor") -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        options: dict[str, Any] = {"pool_pre_ping": True}
        if self.is_sqlite:
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        elif url.startswith("postgresql"):
            options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        self.engine = sa.create_engine(url, **options)
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_wal)
        else:  # the tables are declared without a schema; PostgreSQL puts them in their own
            self.engine = self.engine.execution_options(schema_translate_map={None: schema})
        self.schema = None if self.is_sqlite else schema
        self._ready = False

    def __repr__(self) -> str:
        return f"PredictionStore({redacted(self.url)})"

    def ensure(self) -> None:
        """Create the schema and tables if missing; raise StoreUnavailableError if unreachable."""
        if self._ready:
            return
        if self.is_sqlite:
            path = Path(self.url.split("///", 1)[1])
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _unavailable(self, exc) from exc
        with self.connect() as conn:
            if self.schema:
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            metadata.create_all(conn)
        self._ready = True

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A transaction; a store that cannot be reached raises StoreUnavailableError."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, InterfaceError, OSError) as exc:
            raise _unavailable(self, exc) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise _unavailable(self, exc) from exc
            raise

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ predictions

    def insert_predictions(self, rows: list[dict[str, Any]]) -> int:
        """Insert rows, skipping request ids already stored (a replay after a partial write)."""
        if not rows:
            return 0
        self.ensure()
        with self.connect() as conn:
            if conn.dialect.name in ("sqlite", "postgresql"):
                dialect = __import__(f"sqlalchemy.dialects.{conn.dialect.name}", fromlist=["x"])
                statement = dialect.insert(predictions).on_conflict_do_nothing()
                return conn.execute(statement, rows).rowcount
            inserted = 0
            for row in rows:
                try:
                    with conn.begin_nested():
                        conn.execute(predictions.insert(), row)
                    inserted += 1
                except IntegrityError:
                    pass
            return inserted

    def prediction(self, request_id: str) -> dict[str, Any] | None:
        self.ensure()
        with self.connect() as conn:
            row = conn.execute(
                sa.select(predictions).where(predictions.c.request_id == request_id)
            ).first()
        return dict(row._mapping) if row is not None else None

    def count(self) -> int:
        self.ensure()
        with self.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar())

    def predictions_between(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> pd.DataFrame:
        """Predictions received in [since, until), with the latest feedback of each joined."""
        self.ensure()
        query = sa.select(predictions)
        if since is not None:
            query = query.where(predictions.c.received_at >= since)
        if until is not None:
            query = query.where(predictions.c.received_at < until)
        with self.connect() as conn:
            frame = pd.DataFrame(conn.execute(query.order_by("received_at")).mappings().all())
        if frame.empty:
            frame = pd.DataFrame(columns=list(PREDICTION_COLUMNS))
        reviews = self.feedback_for(frame["request_id"].tolist())
        return frame.merge(reviews, on="request_id", how="left")

    # ------------------------------------------------------------------ feedback

    def put_feedback(
        self, request_id: str, reviewer: str, label: str, note: str, patient_id: str | None
    ) -> dict[str, Any] | None:
        """Record a reviewer's label for a prediction; returns the feedback it replaced (the
        same reviewer's earlier one), or None. Unknown request ids raise UnknownRequestError."""
        try:
            return self._put_feedback(request_id, reviewer, label, note, patient_id)
        except IntegrityError:  # the same reviewer's first feedback arrived twice at once
            return self._put_feedback(request_id, reviewer, label, note, patient_id)

    def _put_feedback(
        self, request_id: str, reviewer: str, label: str, note: str, patient_id: str | None
    ) -> dict[str, Any] | None:
        self.ensure()
        now = utcnow()
        with self.connect() as conn:
            known = conn.execute(
                sa.select(predictions.c.request_id).where(predictions.c.request_id == request_id)
            ).first()
            if known is None:
                raise UnknownRequestError(f"no prediction with request id {request_id!r}")
            mine = (feedback.c.request_id == request_id) & (feedback.c.reviewer == reviewer)
            earlier = conn.execute(sa.select(feedback).where(mine)).first()
            values = {"label": label, "note": note, "patient_id": patient_id, "updated_at": now}
            if earlier is None:
                conn.execute(
                    feedback.insert(),
                    {"request_id": request_id, "reviewer": reviewer, "created_at": now, **values},
                )
                return None
            conn.execute(feedback.update().where(mine).values(**values))
            return dict(earlier._mapping)

    def feedback_for(self, request_ids: list[str] | None = None) -> pd.DataFrame:
        """Per request: the latest reviewer's label, patient id and how many reviewed it."""
        columns = ["request_id", "reviewed_label", "reviewer", "patient_id", "reviews"]
        self.ensure()
        query = sa.select(feedback).order_by(feedback.c.updated_at)
        with self.connect() as conn:
            frame = pd.DataFrame(conn.execute(query).mappings().all())
        if frame.empty:
            return pd.DataFrame(columns=columns)
        if request_ids is not None:
            frame = frame[frame["request_id"].isin(request_ids)]
        counts = frame.groupby("request_id").size().rename("reviews")
        latest = frame.groupby("request_id").tail(1).set_index("request_id")
        latest = latest.rename(columns={"label": "reviewed_label"})
        joined = latest[["reviewed_label", "reviewer", "patient_id"]].join(counts)
        return joined.reset_index()[columns]

    # ------------------------------------------------------------------ verdicts

    def add_verdict(self, summary: dict[str, Any]) -> None:
        self.ensure()
        window = summary["window"]
        with self.connect() as conn:
            conn.execute(
                verdicts.insert(),
                {
                    "created_at": utcnow(),
                    "status": summary["status"],
                    "window_start": datetime.fromisoformat(window["start"]),
                    "window_end": datetime.fromisoformat(window["end"]),
                    "n": int(summary["n"]),
                    "summary": json.dumps(summary, default=str),
                },
            )

    def latest_verdict(self) -> dict[str, Any] | None:
        self.ensure()
        with self.connect() as conn:
            row = conn.execute(
                sa.select(verdicts).order_by(verdicts.c.created_at.desc()).limit(1)
            ).first()
        if row is None:
            return None
        return {**json.loads(row.summary), "recorded_at": row.created_at.isoformat()}


def _unavailable(store: PredictionStore, exc: BaseException) -> StoreUnavailableError:
    detail = str(getattr(exc, "orig", exc) or type(exc).__name__).strip().splitlines()[0]
    return StoreUnavailableError(f"prediction store {redacted(store.url)} unavailable: {detail}")


def _sqlite_wal(connection: Any, _: Any) -> None:
    """Write-ahead logging: the monitor flow reads while the service writes."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
