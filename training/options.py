"""The command-line options every training script takes: output folder, smoke-run length, recipe overrides, seed,
resumption and experiment trackers."""

from __future__ import annotations

import argparse

from training.tracking import resolve_report_to, tracker_names


def add_run_arguments(parser: argparse.ArgumentParser, set_example: str) -> None:
    """`--output-dir`, `--max-steps`, `--set`, `--seed`, `--resume`, `--report-to` (check them with
    `check_run_arguments`)."""
    parser.add_argument("--output-dir", help="where everything is written (default: outputs/<recipe name>)")
    parser.add_argument("--max-steps", type=int, help="cap every stage at this many optimiser steps (smoke runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a recipe field by its dotted path, e.g. --set {set_example}; repeatable")
    parser.add_argument("--seed", type=int, help="the run's seed (same as --set seed=N)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="continue from the state saved in the output folder (default: when there is one)")
    parser.add_argument("--report-to", nargs="+", default=["none"], metavar="TRACKER",
                        help="experiment trackers besides metrics.jsonl: all (every installed one), none (default), "
                             f"or some of {', '.join(tracker_names())}")


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad run options before anything runs; `args.report_to` becomes the list of trackers to start."""
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    try:
        args.report_to = resolve_report_to(args.report_to)
    except ValueError as error:
        parser.error(str(error))

