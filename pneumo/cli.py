"""The `pneumo` command: one thin sub-command per pipeline step (what dvc.yaml runs).

Each sub-command reads params.yaml, calls one plain function from the library and reports
failures as a single line that says what to do, with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pneumo.config import Settings, load_settings
from pneumo.errors import PneumoError
from pneumo.workspace import Workspace

log = logging.getLogger("pneumo")

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace, overrides: dict[str, object] | None = None) -> Settings:
    return load_settings(args.params, overrides)


def _workspace(args: argparse.Namespace) -> Workspace:
    return Workspace(Path(args.params).resolve().parent)


def _data_root(args: argparse.Namespace, settings: Settings) -> Path:
    """Relative dataset paths are relative to the folder holding params.yaml, as in dvc.yaml."""
    root = Path(settings.data.root)
    return root if root.is_absolute() else Path(args.params).resolve().parent / root


def cmd_ingest(args: argparse.Namespace) -> int:
    from pneumo.data.ingest import ingest

    overrides = {"data.root": str(args.data)} if args.data else None
    settings = _settings(args, overrides)
    result = ingest(
        _data_root(args, settings),
        _workspace(args),
        settings.ingest.max_quarantine_fraction,
        settings.ingest.workers,
    )
    print(f"manifest: {result.images} images, {result.quarantined} quarantined")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pneumo.data.validate import validate

    settings = _settings(args)
    workspace = _workspace(args)
    validate(workspace.manifest, settings.validate_, workspace)
    print(f"data contract passed; Data Docs: {workspace.data_docs / 'index.html'}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from pneumo.data.split import SPLIT_NAMES, split

    settings = _settings(args)
    workspace = _workspace(args)
    s = settings.split
    metrics = split(
        workspace.manifest, s.val_fraction, s.test_fraction, s.seed, s.stratify_tolerance, workspace
    )
    counts = ", ".join(f"{n} {metrics[n]['images']}" for n in SPLIT_NAMES)  # type: ignore[index]
    print(f"split ({metrics['test_source']}): {counts}; patients in two splits: 0")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pneumo.data.preprocess import preprocess

    settings = _settings(args)
    workspace = _workspace(args)
    counts = preprocess(
        workspace.split,
        _data_root(args, settings),
        settings.preprocess.image_size,
        workspace,
        settings.preprocess.workers,
    )
    print(f"arrays at {settings.preprocess.image_size} px: {counts} -> {workspace.arrays_dir}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pneumo.train import train

    result = train(_settings(args), _workspace(args))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if isinstance(v, float))
    print(
        f"model -> {result.model_path} (best epoch {result.best_epoch} of {result.epochs_run}); {shown}"
    )
    if result.run_id:
        print(f"MLflow run {result.run_id}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pneumo.evaluate import evaluate

    report = evaluate(_settings(args), _workspace(args))
    d = report["threshold"]
    print(f"threshold {d['threshold']:.4f} ({d['rule']}, chosen on the validation split)")
    print(
        f"{'split':<16}{'n':>6}  {'accuracy':>16}  {'sensitivity':>16}  {'specificity':>16}  {'ROC-AUC':>16}"
    )
    for part in ("test", "test_bacterial", "test_viral"):
        if part not in report:
            continue
        m, ci = report[part], report[part].get("ci", {})

        def cell(name: str, m: dict = m, ci: dict = ci) -> str:
            low, high = ci.get(name, (float("nan"), float("nan")))
            return f"{m[name]:.3f} [{low:.3f}-{high:.3f}]" if ci else f"{m[name]:.3f}"

        print(f"{part:<16}{m['n']:>6}  " + "  ".join(
            f"{cell(k):>16}" for k in ("accuracy", "sensitivity", "specificity", "roc_auc")
        ))  # fmt: skip
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pneumo.predict import Predictor, predict

    workspace = _workspace(args)
    if args.champion:
        if args.model or args.decision:
            raise PneumoError("--champion replaces --model and --decision: give one or the other")
        from pneumo.registry import champion_predictor

        predictor = champion_predictor(_settings(args), workspace)
    else:
        predictor = Predictor.from_files(
            args.model or workspace.model,
            args.decision or workspace.decision,
            _settings(args).model.accelerator(),
        )
    frame = predict(
        args.paths, args.output, predictor, _settings(args).preprocess.workers, args.batch_size
    )
    failed = int(frame["error"].notna().sum())
    counts = frame["predicted_label"].value_counts().to_dict()
    print(
        f"{len(frame)} images -> {args.output}: {counts}"
        + (f"; {failed} unreadable" if failed else "")
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from flows.score import score

    workspace = _workspace(args)
    summary = score(
        str(args.folder.resolve()),
        str(args.output.resolve()) if args.output else None,
        str(workspace.root),
        Path(args.params).name,
        str(args.model.resolve()) if args.model else None,
        str(args.decision.resolve()) if args.decision else None,
    )
    print(
        f"{summary['images']} images -> {summary['output']}: {summary['predicted']}; "
        f"{summary['reused_chunks']} of {summary['chunks']} chunks reused from an earlier run"
        + (f"; {summary['unreadable']} unreadable" if summary["unreadable"] else "")
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pneumo.compare import compare, to_markdown

    workspace = _workspace(args)
    table = compare(_settings(args), workspace)
    print(to_markdown(table))
    print(f"written to {workspace.comparison} and {workspace.comparison.with_suffix('.csv')}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from pneumo.explain import explain_workspace

    written = explain_workspace(_settings(args), _workspace(args))
    print("explanations: " + ", ".join(str(p) for p in written))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from flows.retrain import DEPLOYMENT_NAME, serve

    _settings(args)  # refuse a broken params.yaml before registering anything
    workspace = Path(args.params).resolve().parent
    print(
        f"serving deployment 'retrain/{DEPLOYMENT_NAME}' on cron '{args.cron}' for {workspace}; Ctrl-C stops"
    )
    serve(str(workspace), args.cron, Path(args.params).name)
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from pneumo import registry

    settings = _settings(args)
    workspace = _workspace(args)
    if args.action == "register":
        verdict = registry.register_and_gate(settings, workspace)
        print(registry.verdict_table(verdict))
        print(f"verdict written to {workspace.gate_verdict}")
        return 0  # a kept champion is a verdict, not an error
    if args.action == "promote":
        result = registry.promote(settings, workspace, args.version, args.reason)
        old = f"v{result['previous']} -> previous" if result["previous"] else "no earlier champion"
        print(f"{result['model_name']}: v{result['champion']} is the champion ({old})")
        return 0
    if args.action == "rollback":
        result = registry.rollback(settings, workspace, args.reason or "")
        print(
            f"{result['model_name']}: champion v{result['demoted']} -> v{result['champion']} "
            "('previous' cleared)"
        )
        return 0
    state = registry.status(settings, workspace)
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"{state['model_name']} at {state['tracking_uri']}")
    if not state["versions"]:
        print("no versions yet: run `pneumo registry register` after `pneumo evaluate`")
    for v in state["versions"]:
        m = v["metrics"]
        shown = "  ".join(
            f"{k} {m[k]:.4f}" for k in ("roc_auc", "sensitivity", "specificity") if k in m
        )
        aliases = ",".join(v["aliases"]) or "-"
        note = "  (rolled back)" if v["rolled_back"] else ""
        print(f"v{v['version']:<4}{aliases:<22}{v['validation_status']:<12}{shown}{note}")
    return 0


def _package(args: argparse.Namespace):  # -> pneumo.package.Packaged
    from pneumo.package import package

    packaged = package(
        _settings(args), _workspace(args), args.from_workspace, args.model_version, args.force
    )
    verb = "reused" if packaged.reused_model else "imported"
    print(f"model {packaged.model_tag} ({verb}); Bento {packaged.bento_tag}"
          + (" (up to date)" if packaged.reused_bento else " (built)"))  # fmt: skip
    return packaged


def cmd_package(args: argparse.Namespace) -> int:
    _package(args)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from pneumo.package import bentoml_home, serve_command

    packaged = _package(args)
    settings = _settings(args)
    command, added = serve_command(settings, packaged.bento_tag, args.host, args.port, args.workers)
    env = {**os.environ, **added, "BENTOML_HOME": str(bentoml_home(settings, _workspace(args)))}
    host, port = command[command.index("--host") + 1], command[command.index("--port") + 1]
    print(f"serving {packaged.bento_tag} at http://{host}:{port}"
          " (open it for the web page, /docs for the API); Ctrl-C stops",
          flush=True)  # fmt: skip
    os.execve(command[0], command, env)  # the server replaces this process: Ctrl-C reaches it
    return 0  # not reached


def cmd_params(args: argparse.Namespace) -> int:
    from pneumo.params_file import set_param

    if args.action == "show":
        print(_settings(args).model_dump_json(indent=2, by_alias=True))
        return 0
    for assignment in args.assignments:
        if "=" not in assignment:
            raise PneumoError(f"'{assignment}' is not KEY=VALUE, e.g. data.root=/data/chest_xray")
        key, value = assignment.split("=", 1)
        changed = set_param(Path(args.params), key, value)
        print(f"{key} = {value}" + ("" if changed else " (unchanged)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumo",
        description="Pneumonia detection in chest X-rays: each sub-command is one pipeline step. "
        "`dvc repro` runs them in order and caches their outputs; `make run DATA=<folder>` runs it all.",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="settings file (default: %(default)s)"
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "ingest",
        help="walk a Kermany-layout folder and write the manifest (parquet) and quarantine report",
        description="Reads <root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.{jpeg,jpg,png} on every core. "
        "Unusable files are quarantined with a reason; the run fails above ingest.max_quarantine_fraction.",
    )
    p.add_argument("--data", type=Path, help="dataset folder (default: data.root in params.yaml)")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser(
        "validate",
        help="check the manifest against the Great Expectations data contract and build Data Docs",
        description="Runs the GX checkpoint; exits non-zero with a summary of every failed expectation.",
    )
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser(
        "split",
        help="patient-disjoint, label-stratified, seeded train/val/test split",
        description="Keeps the dataset's test/ folder whole when present, else carves a test split; "
        "validation is carved from the training pool. Counts go to metrics/split.json.",
    )
    p.set_defaults(handler=cmd_split)

    p = sub.add_parser(
        "preprocess",
        help="decode every image once into uint8 arrays at preprocess.image_size",
        description="Grayscale, resized, one .npz per split plus train-only statistics.",
    )
    p.set_defaults(handler=cmd_preprocess)

    p = sub.add_parser(
        "train",
        help="train the CNN on the train split, select the best epoch on val, track it in MLflow",
        description="Reads data/arrays; writes models/model.pt, metrics/train.json and the MLflow run id. "
        "An interrupted run (Ctrl-C, kill) resumes from models/checkpoint.pt when rerun.",
    )
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="choose the threshold on val, score the test split with bootstrap intervals, plot",
        description="The decision threshold follows evaluate.threshold_rule on the validation split "
        "only; test metrics (overall, bacterial, viral) go to metrics/metrics.json and plots/evaluate.",
    )
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser(
        "predict",
        help="predict radiograph files or folders into a CSV (one row per image)",
        description="Rows: path, probability of pneumonia, predicted label, threshold, model, the "
        "true label when the folder says it (NORMAL/ or PNEUMONIA/), and the error for unreadable files.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    p.add_argument(
        "--output", "-o", type=Path, default=Path("predictions.csv"), help="CSV to write"
    )
    p.add_argument(
        "--model", type=Path, help="model file (default: this workspace's models/model.pt)"
    )
    p.add_argument("--decision", type=Path, help="threshold file (default: models/decision.json)")
    p.add_argument(
        "--champion",
        action="store_true",
        help="use the registry's champion (weights and threshold) instead of this workspace's model",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser(
        "score",
        help="score a large folder in chunks on a Dask cluster (resumable), into parquet or CSV",
        description="The `pneumo predict` of thousands of images: one Prefect task per score.chunk_size "
        "images on a local Dask cluster or score.dask_address; finished chunks are kept in "
        "score.work_dir, so a rerun scores only what is missing.",
    )
    p.add_argument("folder", type=Path, metavar="FOLDER", help="folder of radiographs (recursive)")
    p.add_argument(
        "--output", "-o", type=Path, help="table to write, .parquet or .csv (default: score.output)"
    )
    p.add_argument(
        "--model", type=Path, help="model file (default: this workspace's models/model.pt)"
    )
    p.add_argument("--decision", type=Path, help="threshold file (default: models/decision.json)")
    p.set_defaults(handler=cmd_score)

    p = sub.add_parser(
        "compare",
        help="train and score baselines (logistic regression, the paper's CNNs) beside published results",
        description="Same split, same threshold rule as the default model; writes reports/comparison.md "
        "and .csv and logs them to MLflow. Takes minutes: it trains one CNN per compare.paper_archs.",
    )
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser(
        "explain",
        help="Grad-CAM and activation-map grids for correct and wrong test predictions",
        description="Writes PNG grids to plots/explain and logs them to the training's MLflow run.",
    )
    p.set_defaults(handler=cmd_explain)

    p = sub.add_parser(
        "schedule",
        help="register the retrain flow as a Prefect deployment on a cron schedule and serve it",
        description="Uses Prefect's ephemeral API by default, a Prefect server when PREFECT_API_URL is "
        "set. Runs until stopped; each scheduled run validates, retrains, gates and packages.",
    )
    p.add_argument(
        "--cron", default="0 3 * * 1", help="cron expression (default: %(default)s, Mondays 03:00)"
    )
    p.set_defaults(handler=cmd_schedule)

    p = sub.add_parser(
        "registry",
        help="register the evaluated model and gate its promotion; status, promote, rollback",
        description="register: new version (alias challenger), promoted to champion only if it meets "
        "the registry.* floors and trails the champion, re-scored on this test split, by at most "
        "registry.margin. promote/rollback move the champion deliberately and record why.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("register", help="register + gate; prints champion vs challenger")
    status = actions.add_parser("status", help="aliases and versions with metrics and verdicts")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    promote = actions.add_parser("promote", help="make a version the champion, bypassing the gate")
    promote.add_argument("--version", type=int, required=True, help="model version number")
    promote.add_argument("--reason", required=True, help="why (recorded in the version's tags)")
    rollback = actions.add_parser(
        "rollback", help="champion <- previous (the demoted one is tagged)"
    )
    rollback.add_argument("--reason", help="why (recorded in the demoted version's tags)")
    p.set_defaults(handler=cmd_registry)

    for name, handler, help_text in (
        ("package", cmd_package, "import the champion into the BentoML store and build its Bento"),
        ("serve", cmd_serve, "package the champion if needed, then serve it over HTTP"),
    ):
        p = sub.add_parser(
            name,
            help=help_text,
            description="The model comes from the MLflow registry (alias 'champion' unless "
            "--model-version says otherwise) or, with --from-workspace, from this workspace's "
            "models/ and metrics/. Stores live in serve.bentoml_home; the Bento is tagged with the "
            "model version and rebuilt only when the service code or params change.",
        )
        p.add_argument(
            "--from-workspace",
            action="store_true",
            help="package models/model.pt + decision.json + metrics/metrics.json of this workspace",
        )
        p.add_argument(
            "--model-version",
            default="champion",
            metavar="ALIAS_OR_VERSION",
            help="registry alias or version number (default: %(default)s)",
        )
        p.add_argument("--force", action="store_true", help="rebuild the Bento even if up to date")
        if name == "serve":  # without editing params.yaml (which would rebuild the Bento)
            p.add_argument("--host", help="address to listen on (default: serve.host)")
            p.add_argument("--port", type=int, help="port (default: serve.port)")
            p.add_argument(
                "--workers", type=int, help="model worker processes (default: serve.workers)"
            )
        p.set_defaults(handler=handler)

    p = sub.add_parser("params", help="show params.yaml as validated settings, or set keys in it")
    p.add_argument("action", choices=["show", "set"])
    p.add_argument(
        "assignments", nargs="*", metavar="KEY=VALUE", help="e.g. preprocess.image_size=96"
    )
    p.set_defaults(handler=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    # Our own messages at the chosen level; the stack's chatty libraries only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(level)
    handler: Handler = args.handler
    try:
        return handler(args)
    except PneumoError as exc:
        print(f"pneumo {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pneumo {args.command}: interrupted; earlier outputs are untouched", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
