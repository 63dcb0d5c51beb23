"""Compare two runs' provenance: what went in differently, what cannot be told apart, and what came out.

Inputs compared, section by section: code (git commit, branch, dirty flag, hash of the
uncommitted diff, script and its hash), the command line (``sys.argv`` as recorded, secrets
redacted), environment (Python/torch/Lightning/MLflow versions and every package whose version
changed, from the packages file next to each document), the recorded environment variables,
data (per dataloader: fingerprint, length, class, and the loader's batch_size, shuffle,
sampler, drop_last, num_workers), hyperparameters (not the execution_start_time/end_time
params, which say when, not how), seed, weights (the state-dict hash each fit started from) and
hardware (host, platform, CPU, RAM, GPU). Outcomes, shown but not counted:
every metric's final value, and the final weights (each logged model's latest version).

Nothing is called the same without being known to be: two dataset fingerprints that agree show
the same data only when both hash the whole content (fingerprint_status complete, or the
dataset's own hook); a sampled fingerprint (status sample, or an older document's complete
with the 8-item method), a reference, or no fingerprint is reported "cannot tell". A section
neither run recorded (a plain loop's initial weights) is named as such and not counted.

Exit status, as diff(1): 0 every input is known to be the same; 1 some input differs or
cannot be told apart (the summary line says which); 2 an input cannot be read.
"""

from __future__ import annotations

import argparse
import re
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
from prov4ml_lightning.cli._view import (
    RunView,
    datasets_by_name,
    final_metrics,
    final_weights,
    fmt,
    initial_weights,
    table,
)

__all__ = ["HELP", "NAME", "SECTIONS", "Difference", "add_arguments", "compare", "fingerprint_kind", "run"]

NAME = "diff"
HELP = ("what differs between two runs, and what cannot be told apart: code, command line, environment and its "
        "variables, data and dataloaders, hyperparameters, seed, initial weights, hardware; final metrics and weights")

_CODE_KEYS = ("git_commit", "git_branch", "git_dirty", "git_diff_sha256", "git_remote", "script_path",
              "script_sha256")
_DATA_KEYS = ("length", "dataset_class", "batch_size", "shuffle", "sampler", "drop_last", "num_workers")
#: Sections in the order they are printed; all are inputs.
SECTIONS = ("code", "command line", "environment", "environment variables", "data", "hyperparameters", "seed",
            "weights", "hardware")
#: The method text of the fingerprint older documents called "complete": a sample, not the whole content.
_SAMPLED_METHOD = re.compile(r"\bof \d+ evenly spaced items\b")
#: Parameters that record when the run happened (the original prov4ml's), not how: never inputs.
_TIMES = re.compile(r"^execution_(start|end)_time(/\d+)?$")
_NOT_CONTENT = {"reference": "reference only", "unknown": "not fingerprinted", "pending": "not fingerprinted",
                "not_sampled": "not fingerprinted"}


@dataclass(frozen=True)
class Difference:
    """One input of run A and run B (``None``: not recorded in that run) that differs or, when
    ``cannot_tell`` says why (``"sampled"``), that cannot be told apart."""

    section: str
    key: str
    a: Any
    b: Any
    cannot_tell: str | None = None


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


def fingerprint_kind(attrs: Mapping[str, Any]) -> str | None:
    """What a dataset's fingerprint says about its content: ``None`` a hash of all of it (status
    ``complete`` with a whole-content method, or ``hook``, the dataset's own identity);
    ``"sampled"`` a hash of some items; otherwise why it is no content hash at all."""
    if not attrs.get("fingerprint"):
        return "not fingerprinted"
    status = attrs.get("fingerprint_status")
    if status == "hook" or (status == "complete" and not _SAMPLED_METHOD.search(str(attrs.get("fingerprint_method")))):
        return None
    if status in ("sample", "complete"):
        return "sampled"
    return _NOT_CONTENT.get(str(status), "fingerprint of unknown kind")


def _fingerprints(key: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> Difference | None:
    """The fingerprints of one dataset in both runs: different, cannot tell, or (``None``) the same."""
    fa, fb = a.get("fingerprint"), b.get("fingerprint")
    kinds = (fingerprint_kind(a), fingerprint_kind(b))
    content = all(k in (None, "sampled") for k in kinds)  # hashes of the content, whole or sampled
    how = [(d.get("fingerprint_method"), d.get("fingerprint_sample_size")) for d in (a, b)]
    if not content:
        why = next(k for k in kinds if k not in (None, "sampled"))
    elif how[0] != how[1]:
        why = "fingerprinted differently"
    elif not _same(fa, fb):
        return Difference("data", key, fa, fb)  # the same hash of the same items disagrees
    elif "sampled" in kinds:
        why = "sampled"
    else:
        return None
    return Difference("data", key, fa, fb, cannot_tell=why)


def _data(a: RunView, b: RunView) -> list[Difference]:
    da, db = datasets_by_name(a), datasets_by_name(b)
    out: list[Difference] = []
    for name in sorted(set(da) | set(db)):
        if name not in da or name not in db:
            out.append(Difference("data", name, "present" if name in da else None, "present" if name in db else None))
            continue
        found = _fingerprints(f"{name} fingerprint", da[name], db[name])
        out += [found] if found else []
        out += _pairs("data", da[name], db[name], _DATA_KEYS, prefix=f"{name} ")
    return out


def _weights(a: RunView, b: RunView) -> list[Difference]:
    wa, wb = initial_weights(a), initial_weights(b)
    out: list[Difference] = []
    for fit in sorted(set(wa) | set(wb)):
        key = f"{fit} initial state_dict_sha256"
        if fit not in wa or fit not in wb:  # one run has a fit the other has not
            out.append(Difference("weights", key, wa.get(fit), wb.get(fit)))
        elif wa[fit] is None or wb[fit] is None:
            out.append(Difference("weights", key, wa[fit], wb[fit], cannot_tell="not recorded"))
        elif not _same(wa[fit], wb[fit]):
            out.append(Difference("weights", key, wa[fit], wb[fit]))
    return out


def compare(a: RunView, b: RunView) -> list[Difference]:
    """Every input that differs between runs ``a`` and ``b``, or cannot be told apart, section by section."""
    return [
        *_pairs("code", a.code, b.code, _CODE_KEYS),
        *_pairs("command line", {"command_line": a.command_line}, {"command_line": b.command_line}),
        *_environment(a, b),
        *_pairs("environment variables", a.environment_variables, b.environment_variables),
        *_data(a, b),
        *_pairs("hyperparameters", *({k: v for k, v in view.params.items() if not _TIMES.match(k)} for view in (a, b))),
        *_pairs("seed", {"seed": a.seed}, {"seed": b.seed}),
        *_weights(a, b),
        *_pairs("hardware", a.hardware, b.hardware),
    ]


def _recorded(view: RunView, section: str) -> bool:
    return bool({
        "code": view.code, "command line": view.command_line is not None, "environment": view.environment,
        # the variables of the selection that were not set are absent: an environment says they were unset
        "environment variables": view.environment, "data": view.typed("Dataset"),
        "hyperparameters": view.params, "seed": view.seed is not None, "weights": initial_weights(view),
        "hardware": view.hardware,
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


def _weight_rows(a: RunView, b: RunView) -> list[tuple[Any, ...]]:
    wa, wb = final_weights(a), final_weights(b)
    rows: list[tuple[Any, ...]] = []
    for name in sorted(set(wa) | set(wb)):
        va, vb = wa.get(name), wb.get(name)
        verdict = "-" if va is None or vb is None else "same" if va == vb else "different"
        rows.append((fmt(name, 40), fmt(va, 20), fmt(vb, 20), verdict))
    return rows


def _shown(value: Any, other: Any, width: int = 50) -> str:
    """``value`` in a table cell; a long text that begins as ``other`` does (a command line with
    one more argument) is shown from a little before where the two part."""
    if isinstance(value, str) and isinstance(other, str) and len(value) > width:
        common = next((i for i, (x, y) in enumerate(zip(value, other)) if x != y), min(len(value), len(other)))
        if common > width // 2:
            return fmt("\u2026" + value[common - 15:], width)
    return fmt(value, width)


def _print_section(section: str, rows: list[Difference], recorded: bool) -> str | None:
    """Print one section; return why it cannot be told apart (``None``: same, or only differences)."""
    echo("")
    if not rows:
        if recorded:
            echo(f"{section}: same")
            return None
        echo(f"{section}: not recorded in either run")
        return None
    differ = sum(d.cannot_tell is None for d in rows)
    unknown = [d for d in rows if d.cannot_tell is not None]
    counts = [f"{differ} difference{'s' if differ > 1 else ''}" if differ else "",
              f"{len(unknown)} cannot tell" if unknown else ""]
    echo(f"{section}: {', '.join(c for c in counts if c)}")
    cells = [(d.key, _shown(d.a, d.b), _shown(d.b, d.a), *([f"{d.cannot_tell}: cannot tell"] if d.cannot_tell else []))
             for d in rows]
    for line in table([("", "A", "B"), *cells]):
        echo(line)
    return "; ".join(f"{d.key}: {d.cannot_tell}" for d in unknown) or None


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    a = RunView.load(resolve_prov_file(args.run_a, args.tracking_uri, scratch))
    b = RunView.load(resolve_prov_file(args.run_b, args.tracking_uri, scratch))
    found = compare(a, b)
    echo(f"A: {a.title()}  {a.path}")
    echo(f"B: {b.title()}  {b.path}")
    unknown: dict[str, str] = {}
    unrecorded: list[str] = []
    for section in SECTIONS:
        recorded = _recorded(a, section) or _recorded(b, section)
        why = _print_section(section, [d for d in found if d.section == section], recorded)
        if why:
            unknown[section] = why
        if not recorded:
            unrecorded.append(section)
    metric_rows = _metric_rows(a, b)
    if metric_rows:
        echo("")
        echo("metrics (final values; outcomes, not counted as differences)")
        for line in table([("context", "metric", "A", "B", "B-A"), *metric_rows]):
            echo(line)
    weight_rows = _weight_rows(a, b)
    if weight_rows:
        echo("")
        echo("final weights (state_dict_sha256 of each model's latest version; outcomes, not counted)")
        for line in table([("model", "A", "B", ""), *weight_rows]):
            echo(line)
    echo("")
    differences = [d for d in found if d.cannot_tell is None]
    cannot = "cannot tell: " + ", ".join(f"{s} ({why})" for s, why in unknown.items())
    if differences:
        counts = ", ".join(f"{s} {n}" for s in SECTIONS if (n := sum(d.section == s for d in differences)))
        echo(f"{len(differences)} input difference{'s' if len(differences) > 1 else ''} ({counts})"
             + (f"; {cannot}" if unknown else ""))
        return EXIT_DIFFERENT
    if unknown:
        echo(f"no recorded input differs, but {cannot}")
        return EXIT_DIFFERENT
    # What neither run recorded is no input of either (a plain loop records no initial weights): named, not counted.
    echo("no input differences" + (f" (not recorded in either run: {', '.join(unrecorded)})" if unrecorded else ""))
    return EXIT_OK
