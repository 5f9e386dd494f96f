"""`pneumo scope-fit`: fit the pixel scope prior on the out-of-scope set (pneumo/inference/scope.py)."""

from __future__ import annotations

import argparse

from pneumo.cli import Command, load_settings_of, workspace_of


def run(args: argparse.Namespace) -> int:
    from pneumo.inference.scope import fit_prior_file

    fitted = fit_prior_file(load_settings_of(args), workspace_of(args))
    print(f"{fitted['path']}: {fitted['in_scope']} train images in scope against "
          f"{fitted['out_of_scope']} out of scope ({', '.join(fitted['kinds'])}); commit it, then "
          "`dvc repro guard`")  # fmt: skip
    return 0


COMMAND = Command(
    "scope-fit",
    help="fit the pixel scope prior on data.scope_root's radiographs (writes its prior.json)",
    description=(
        "The scope check's pixel prior is a logistic regression on the model's input pixels (no "
        "network weights), telling the train split's paediatric frontal radiographs from the "
        "adults, laterals and other body parts in data.scope_root. It is written to "
        "data.scope_root/prior.json, which is committed: a clone without the images still "
        "ships it. Run after `pneumo preprocess` and whenever the set changes."
    ),
    handler=run,
)
