"""Compare two runs' provenance: what went in differently, and what came out.

Inputs compared: code (git commit, branch, dirty flag, hash of the uncommitted diff, script
and its hash), environment (Python/torch/Lightning/MLflow versions and every package whose
version changed, from the packages file next to each document), data (each dataset's
fingerprint, length, class, batch size), hyperparameters, seed, and hardware (host, platform,
CPU, RAM, GPU). Outputs: every metric's final value side by side with the change.

Exit status 1 when any input differs, 0 when none does. Metrics are outcomes, shown but not
counted: two runs with identical inputs rarely end on bit-identical timings.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prov4ml_lightning.cli._common import (
    EXIT_DIFFERENT,
    EXIT_OK,
    Scratch,
    add_run_argument,
    echo,
    resolve_prov_file,
)
from prov4ml_lightning.cli._view import RunView, datasets_by_name, final_metrics, fmt, table

__all__ = ["HELP", "NAME", "Difference", "add_arguments", "compare", "run"]

NAME = "diff"
HELP = "what differs between two runs: code, environment, data, hyperparameters, seed, hardware, metrics"

_CODE_KEYS = ("git_commit", "git_branch", "git_dirty", "git_diff_sha256", "git_remote", "script_path",
              "script_sha256")
_DATA_KEYS = ("fingerprint", "length", "dataset_class", "batch_size", "num_workers")
#: Sections in the order they are printed; all count as differences.
SECTIONS = ("code", "environment", "data", "hyperparameters", "seed", "hardware")


@dataclass(frozen=True)
class Difference:
    """One value that differs between run A and run B (``None``: not recorded in that run)."""

    section: str
    key: str
    a: Any
    b: Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser, "run_a", "run_b")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b) or (a != a and b != b)  # NaN == NaN here
    return str(a) == str(b) if a is not None and b is not None else a is b


def _pairs(section: str, a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str] | None = None,
           prefix: str = "") -> list[Difference]:
    keys = list(keys) if keys is not None else sorted(set(a) | set(b))
    return [Difference(section, prefix + k, a.get(k), b.get(k)) for k in keys
            if (k in a or k in b) and not _same(a.get(k), b.get(k))]


def _environment(a: RunView, b: RunView) -> list[Difference]:
    ea, eb = a.environment, b.environment
    versions = sorted(k for k in set(ea) | set(eb) if k.endswith("_version"))
    out = _pairs("environment", ea, eb, versions)
    pa, pb = a.packages, b.packages
    if pa is not None and pb is not None:
        out += _pairs("environment", pa, pb, prefix="package ")
    elif not _same(ea.get("packages_sha256"), eb.get("packages_sha256")):
        # Package lists not at hand (files missing): their hashes still tell whether they differ.
        out.append(Difference("environment", "packages_sha256 (package list not found)",
                              ea.get("packages_sha256"), eb.get("packages_sha256")))
    return out


def _data(a: RunView, b: RunView) -> list[Difference]:
    da, db = datasets_by_name(a), datasets_by_name(b)
    out: list[Difference] = []
    for name in sorted(set(da) | set(db)):
        if name not in da or name not in db:
            out.append(Difference("data", name, "present" if name in da else None, "present" if name in db else None))
            continue
        out += _pairs("data", da[name], db[name], _DATA_KEYS, prefix=f"{name} ")
    return out


def compare(a: RunView, b: RunView) -> list[Difference]:
    """Every input that differs between runs ``a`` and ``b``, section by section."""
    return [
        *_pairs("code", a.code, b.code, _CODE_KEYS),
        *_environment(a, b),
        *_data(a, b),
        *_pairs("hyperparameters", a.params, b.params),
        *_pairs("seed", {"seed": a.seed}, {"seed": b.seed}),
        *_pairs("hardware", a.hardware, b.hardware),
    ]


def _recorded(view: RunView, section: str) -> bool:
    return bool({
        "code": view.code, "environment": view.environment, "data": view.typed("Dataset"),
        "hyperparameters": view.params, "seed": view.seed is not None, "hardware": view.hardware,
    }[section])


def _metric_rows(a: RunView, b: RunView) -> list[tuple[Any, ...]]:
    ma, mb = final_metrics(a), final_metrics(b)
    rows: list[tuple[Any, ...]] = []
    for key in sorted(set(ma) | set(mb)):
        va = ma[key].attrs.get("last_value") if key in ma else None
        vb = mb[key].attrs.get("last_value") if key in mb else None
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        rows.append((key[0], fmt(key[1], 40), fmt(va), fmt(vb), f"{delta:+.4g}" if delta is not None else "-"))
    return rows


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    a = RunView.load(resolve_prov_file(args.run_a, args.tracking_uri, scratch))
    b = RunView.load(resolve_prov_file(args.run_b, args.tracking_uri, scratch))
    differences = compare(a, b)
    echo(f"A: {a.title()}  {a.path}")
    echo(f"B: {b.title()}  {b.path}")
    for section in SECTIONS:
        rows = [d for d in differences if d.section == section]
        echo("")
        if rows:
            echo(f"{section}: {len(rows)} difference{'s' if len(rows) > 1 else ''}")
            for line in table([("", "A", "B"), *((d.key, fmt(d.a, 50), fmt(d.b, 50)) for d in rows)]):
                echo(line)
        elif not (_recorded(a, section) or _recorded(b, section)):
            echo(f"{section}: not recorded in either run")
        else:
            echo(f"{section}: same")
    metric_rows = _metric_rows(a, b)
    if metric_rows:
        echo("")
        echo("metrics (final values; outcomes, not counted as differences)")
        for line in table([("context", "metric", "A", "B", "B-A"), *metric_rows]):
            echo(line)
    echo("")
    if differences:
        counts = ", ".join(f"{s} {n}" for s in SECTIONS if (n := sum(d.section == s for d in differences)))
        echo(f"{len(differences)} input difference{'s' if len(differences) > 1 else ''} ({counts})")
        return EXIT_DIFFERENT
    echo("no input differences")
    return EXIT_OK
