"""The `score` flow: predict a large folder in chunks on Dask, resumable chunk by chunk.

Each chunk of ``score.chunk_size`` images is one Prefect task that calls
:func:`pneumo.inference.predictor.predict_paths`, the code behind ``pneumo predict``, on a local Dask cluster
(``score.n_workers`` processes) or on any Dask scheduler (``score.dask_address``). A chunk's rows
are kept in ``score.work_dir`` under a key made of its files (path, size, modification time) and
of the model and threshold files, so a rerun after an interruption or a crash scores only the
chunks not done yet; the output is assembled from the chunk files in folder order. The network
runs in ``model.runtime`` (pneumo/inference/runtime.py; OpenVINO on a CPU, equal to torch fp32 to 1e-4).

    pneumo score FOLDER [--output scores.parquet]
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

# isort: off
import pneumo  # noqa: F401  (switches telemetry off before prefect is imported)

# isort: on
import dask
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.futures import as_completed

from pneumo.config import ModelSettings, ScoreSettings, load_settings
from pneumo.errors import PneumoError
from pneumo.workspace import Workspace, atomic_path

KEY_VERSION = "1"  # bump when a chunk's rows change meaning, so old results are not reused


class ScoreError(PneumoError):
    """Some chunks could not be scored; those done are kept and a rerun retries the rest."""


@dataclass(frozen=True)
class Chunk:
    index: int
    key: str
    paths: tuple[str, ...]


def model_key(model_path: Path, decision_path: Path) -> str:
    """Identity of what scores: the weights and the decision threshold, by content."""
    digest = hashlib.sha256(KEY_VERSION.encode())
    for path in (model_path, decision_path):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _file_identity(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path}\0missing"  # scored as an error row; rescored once the file appears
    return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"


def plan_chunks(files: list[Path], chunk_size: int, scorer_key: str) -> list[Chunk]:
    """Cut the file list into chunks keyed by their files' identity and the scorer's."""
    chunks = []
    for index, start in enumerate(range(0, len(files), chunk_size)):
        part = files[start : start + chunk_size]
        digest = hashlib.sha256(scorer_key.encode())
        for path in part:
            digest.update(_file_identity(path).encode() + b"\n")
        chunks.append(Chunk(index, digest.hexdigest()[:32], tuple(str(p) for p in part)))
    return chunks


def chunk_result(work_dir: Path, chunk: Chunk) -> Path:
    return Path(work_dir) / f"chunk-{chunk.key}.parquet"


@lru_cache(maxsize=2)
def _predictor(
    model_path: str, decision_path: str, scorer_key: str, inference: ModelSettings
) -> Any:
    """One model load per Dask worker process and model, not one per chunk.

    The device and precision of ``model.*`` are resolved here, on the worker that runs them.
    """
    from pneumo.inference.predictor import Predictor

    return Predictor.from_files(Path(model_path), Path(decision_path), inference.accelerator(),
                                runtime=inference.runtime)  # fmt: skip


@task(name="score-chunk", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def score_chunk(
    chunk: Chunk,
    result_path: str,
    model_path: str,
    decision_path: str,
    scorer_key: str,
    inference: ModelSettings,
    batch_size: int,
    threads: int,
) -> dict[str, int]:
    """Predict one chunk with `predict_paths` and keep its rows (written atomically)."""
    from pneumo.accel import configure_threads
    from pneumo.inference.predictor import predict_paths

    configure_threads(threads)  # one Dask worker thread = this many torch threads
    predictor = _predictor(model_path, decision_path, scorer_key, inference)
    # workers=1: decode in this worker; Dask already runs one task per core.
    frame = predict_paths(
        [Path(p) for p in chunk.paths], predictor, workers=1, batch_size=batch_size
    )
    with atomic_path(Path(result_path)) as tmp:
        frame.to_parquet(tmp, index=False)
    return {"index": chunk.index, "images": len(frame), "failed": int(frame["error"].notna().sum())}


def dask_task_runner(settings: ScoreSettings, api_url: str | None = None) -> Any:
    """The configured Dask scheduler, or a local cluster on loopback reporting to ``api_url``."""
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    from pneumo.accel import available_cores

    n_workers = settings.n_workers or max(1, available_cores() // settings.threads_per_worker)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": settings.threads_per_worker,
            "processes": True,  # decoding and torch both want their own process
            "host": "127.0.0.1",
            "dashboard_address": None,
            # Without an API URL each worker process would start a temporary Prefect server of
            # its own (seconds each, and its task runs invisible): report to the flow's API.
            "env": {"PREFECT_API_URL": api_url} if api_url else {},
        }
    )


def _submit_all(
    todo: list[tuple[Chunk, Path]],
    model_path: Path,
    decision_path: Path,
    scorer_key: str,
    inference: ModelSettings,
    settings: ScoreSettings,
    total: int,
) -> None:
    """One task per chunk not scored yet; progress (log + artifact) as they finish."""
    logger = get_run_logger()
    done = total - len(todo)
    progress = create_progress_artifact(
        progress=100.0 * done / total, key="score-progress", description=f"chunks of {total} scored"
    )
    futures = [
        score_chunk.submit(
            chunk,
            str(result),
            str(model_path),
            str(decision_path),
            scorer_key,
            inference,
            settings.batch_size,
            settings.threads_per_worker,
        )
        for chunk, result in todo
    ]
    failures = []
    for future in as_completed(futures):
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - report every failed chunk, keep the others
            failures.append(str(exc))
            continue
        done += 1
        logger.info(
            "chunk %d scored (%d images, %d unreadable): %d/%d chunks done",
            outcome["index"], outcome["images"], outcome["failed"], done, total,
        )  # fmt: skip
        update_progress_artifact(progress, 100.0 * done / total)
    if failures:
        raise ScoreError(
            f"{len(failures)} of {len(todo)} chunks failed (first: {failures[0]}); the others "
            "are kept: rerun to score only the failed ones"
        )


@flow(name="score-on-dask", log_prints=True)
def score_on_dask(
    folder: str,
    output: str | None = None,
    workspace: str = ".",
    params: str = "params.yaml",
    model: str | None = None,
    decision: str | None = None,
) -> dict[str, Any]:
    """Plan the chunks, score those not done yet on the task runner, assemble the table."""
    logger = get_run_logger()
    root = Path(workspace).resolve()
    ws = Workspace(root)
    everything = load_settings(root / params)
    settings, inference = everything.score, everything.model
    out = Path(output) if output else settings.output
    out = out if out.is_absolute() else root / out
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ScoreError(f"output {out} must end in .parquet or .csv")
    work_dir = settings.work_dir if settings.work_dir.is_absolute() else root / settings.work_dir
    model_path = Path(model) if model else ws.model
    decision_path = Path(decision) if decision else ws.decision
    from pneumo.inference.predictor import Predictor, collect_images

    # A missing or broken model (or an unavailable model.device) fails here, once.
    Predictor.from_files(model_path, decision_path, inference.accelerator(),
                         runtime=inference.runtime)  # fmt: skip
    scorer_key = model_key(model_path, decision_path)
    files = collect_images([Path(folder)])
    chunks = plan_chunks(files, settings.chunk_size, scorer_key)
    results = [chunk_result(work_dir, c) for c in chunks]
    todo = [(c, r) for c, r in zip(chunks, results, strict=True) if not r.is_file()]
    logger.info(
        "%d images in %d chunks of %d; %d chunks already scored, %d to score",
        len(files), len(chunks), settings.chunk_size, len(chunks) - len(todo), len(todo),
    )  # fmt: skip
    if todo:
        _submit_all(todo, model_path, decision_path, scorer_key, inference, settings, len(chunks))
    frame = pd.concat([pd.read_parquet(r) for r in results], ignore_index=True)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    summary = {
        "images": len(frame),
        "chunks": len(chunks),
        "scored_chunks": len(todo),
        "reused_chunks": len(chunks) - len(todo),
        "unreadable": int(frame["error"].notna().sum()),
        "predicted": {str(k): int(v) for k, v in frame["predicted_label"].value_counts().items()},
        "output": str(out),
    }
    create_markdown_artifact(
        key="score-summary",
        markdown="# pneumo score\n\n"
        + "\n".join(f"- **{k}**: `{v}`" for k, v in summary.items())
        + "\n",
        description=f"batch scoring of {folder}",
    )
    return summary


@flow(name="score")
def score_folder(
    folder: str,
    output: str | None = None,
    workspace: str = ".",
    params: str = "params.yaml",
    model: str | None = None,
    decision: str | None = None,
) -> dict[str, Any]:
    """Score every image under ``folder`` into one table (parquet or CSV, by its suffix).

    A task runner is fixed when a flow starts, so this flow reads ``score.*`` first and runs the
    work as a subflow on the Dask cluster those settings name (a deployment honours them too).
    """
    settings = load_settings(Path(workspace).resolve() / params).score
    runner = dask_task_runner(settings, str(get_run_context().client.api_url))
    # The cluster's own INFO chatter (dozens of lines per worker) would bury the progress lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    quiet_workers = {"distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "warning"}
    with dask.config.set(quiet_workers):
        return score_on_dask.with_options(task_runner=runner)(
            folder, output, workspace, params, model, decision
        )
