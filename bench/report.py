"""The README's performance table, generated from the benchmarks' JSON (never typed by hand).

    python bench/train.py > bench/results/train.json
    python bench/preprocess.py --full-size > bench/results/preprocess.json
    python bench/serve.py > bench/results/serve.json
    python bench/serve.py --from-workspace . > bench/results/serve_champion.json  # after make run
    python bench/dicom.py             # writes bench/results/dicom.json itself
    python bench/pipeline.py > bench/results/pipeline.json
    python bench/int8.py --workspace . --accuracy-control > bench/results/int8.json  # after make run
    python bench/report.py            # rewrites the table between the markers in README.md

A figure whose JSON is missing is shown as "not measured".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# The command behind a result that is not `bench/NAME.py` alone.
COMMANDS = {"serve_champion": "bench/serve.py --from-workspace .",
            "int8": "bench/int8.py --workspace . --accuracy-control"}  # fmt: skip
# (benchmark, key path in its JSON, what it is, unit)
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("train", "ceiling_fp32_images_per_s", "training compute ceiling, fp32", "img/s"),
    ("train", "ceiling_bf16_images_per_s", "training compute ceiling, bf16 autocast", "img/s"),
    ("train", "step_fp32_per_image_images_per_s", "training step, fp32, per-image aug. (v1)", "img/s"),
    ("train", "step_bf16_batched_images_per_s", "training step, bf16, batched augmentation", "img/s"),
    ("train", "step_bf16_batched_of_ceiling", "  share of the bf16 ceiling", ""),
    ("train", "inference_bf16_images_per_s", "inference, bf16, no TTA", "img/s"),
    ("train", "inference_bf16_tta_images_per_s", "inference, bf16, 6-view TTA", "img/s"),
    ("train", "recipe.seconds_per_epoch", "default recipe: seconds per epoch", "s"),
    ("train", "recipe.minutes", "default recipe: training minutes (all epochs)", "min"),
    ("preprocess", "speedup", "ingest + preprocess, full-size images, vs a naive PIL loop", "x"),
    ("preprocess", "speedup_preprocess_only", "  preprocess alone (the decode), vs the same loop", "x"),
    ("serve", "targets.p50_ms_at_1.value", "serving /predict p50, 1 client (target 20)", "ms"),
    ("serve", "targets.p99_ms_at_8.value", "serving /predict p99, 8 clients (target 50)", "ms"),
    ("serve", "targets.in_process_images_per_s.value",
     "in-process decode + inference, full-size JPEGs, a thread per core (target 400)", "img/s"),
    ("serve", "targets.throughput_ratio_at_32.value",
     "serving throughput at 32 clients / in-process (target 0.8)", ""),
    ("serve_champion", "targets.p50_ms_at_1.value",
     "the trained champion served (its guard; bf16 where allowed and faster): p50, 1 client", "ms"),
    ("serve_champion", "targets.p99_ms_at_8.value", "  p99, 8 clients", "ms"),
    ("serve_champion", "targets.in_process_images_per_s.value", "  in-process decode + inference",
     "img/s"),
    ("serve_champion", "runtimes.engines.openvino_bf16.images_per_s_batch_32",
     "  its network alone, OpenVINO bf16, batch 32", "img/s"),
    ("serve_champion", "runtimes.engines.openvino_fp32.images_per_s_batch_32",
     "  the same in fp32", "img/s"),
    ("int8", "results.default.max_probability_gap",
     "the champion in int8 (NNCF, the stress stage's setting): largest gap vs fp32 (bound 0.02)", ""),
    ("int8", "results.keep_ends.max_probability_gap", "  first convolution and head kept in fp32", ""),
    ("int8", "results.accuracy_control.max_probability_gap",
     "  NNCF accuracy control, the gap its metric", ""),
    ("int8", "results.accuracy_control.fake_quantize_ops_left",
     "    int8 quantisers it kept (0: the whole network fp32)", ""),
    ("int8", "results.default.cpu_ms_per_image", "  CPU per image in int8, batch 4", "ms"),
    ("int8", "results.fp32_cpu_ms_per_image", "  the same network in fp32", "ms"),
    ("pipeline", "wall_minutes", "time to champion: make run on a fresh clone (target 10)", "min"),
    ("pipeline", "stage_minutes.train", "  of which training", "min"),
    ("pipeline", "stage_minutes.stress", "  the stress and counterfactual stage", "min"),
    ("dicom", "listener.associations_1.instances_per_s",
     "DICOM node end to end (C-STORE in -> SR in Orthanc), 1 association", "img/s"),
    ("dicom", "listener.associations_4.instances_per_s", "  the same, 4 associations", "img/s"),
    ("dicom", "orthanc_store_instances_per_s", "  Orthanc's own C-STORE rate (2 results per image)",
     "inst/s"),
    ("dicom", "predict.concurrency_1.requests_per_s", "  /predict on the same DICOM files, 1 client",
     "img/s"),
    ("dicom", "predict.concurrency_4.requests_per_s", "  /predict, 4 clients", "img/s"),
)  # fmt: skip


def _get(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def table(results: Path = RESULTS) -> str:
    loaded = {
        name: json.loads((results / f"{name}.json").read_text())
        for name in {row[0] for row in ROWS}
        if (results / f"{name}.json").is_file()
    }
    lines = ["| figure | value | benchmark |", "|---|---|---|"]
    for bench, path, label, unit in ROWS:
        value = _get(loaded.get(bench, {}), path)
        shown = "not measured" if value is None else f"{value:,}" if isinstance(value, int) else (
            f"{value:,.3g}" if isinstance(value, float) and abs(value) < 10 else f"{value:,.1f}"
            if isinstance(value, float) else str(value)
        )  # fmt: skip
        lines.append(
            f"| {label} | {shown} {unit if value is not None else ''} | "
            f"`{COMMANDS.get(bench, f'bench/{bench}.py')}` |"
        )
    machine = _get(loaded.get("train", {}), "cpu") or "unknown"
    cores = _get(loaded.get("train", {}), "cores_available") or "?"
    lines.append("")
    lines.append(f"Measured on {cores} cores ({machine}); JSON in `bench/results/`.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--print", action="store_true", help="print the table, change nothing")
    args = parser.parse_args()
    generated = table()
    if args.print:
        print(generated)
        return
    text = args.readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme} lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    args.readme.write_text(f"{head}{START}\n{generated}\n{END}{tail}")
    print(f"performance table written to {args.readme}")


if __name__ == "__main__":
    main()
