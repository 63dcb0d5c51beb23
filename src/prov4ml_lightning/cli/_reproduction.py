"""What a reproduction compares (``prov4ml reproduce``): the environment before the re-run, and
the original run with its reproduction after it (the report: inputs, metric divergence, final
weights), printed, saved beside the new run's PROV document and logged to its MLflow run; and
the exit statuses ``prov4ml reproduce`` documents."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from prov4ml_lightning.cli._common import CliError, warn

__all__ = [
    "ENV_KEYS", "EXIT_COMMAND_FAILED", "EXIT_DIFF_REJECTED", "EXIT_NO_COMMIT", "EXIT_RECORD_INCOMPLETE",
    "EXIT_VENV_FAILED", "build_report", "code_differences", "compare_environment", "editable_mismatches",
    "editable_states", "metric_divergence", "report_lines", "save_report", "untracked_entries",
]

EXIT_RECORD_INCOMPLETE = 3
EXIT_NO_COMMIT = 4
EXIT_DIFF_REJECTED = 5
EXIT_COMMAND_FAILED = 6
EXIT_VENV_FAILED = 7

#: Environment attributes compared (besides the package lock); hardware is shown, not compared.
ENV_KEYS = ("python_version", "python_implementation", "python_flags", "python_xoptions", "torch_version",
             "lightning_version", "torch_cuda_version", "torch_deterministic_algorithms",
             "torch_deterministic_warn_only",
             "torch_cudnn_benchmark", "torch_cudnn_deterministic", "torch_cudnn_allow_tf32", "torch_matmul_allow_tf32",
             "torch_float32_matmul_precision")
#: Environment attributes that the script sets, so only the new run's record can say (not this process).
SET_BY_SCRIPT = {"torch_deterministic_algorithms", "torch_deterministic_warn_only", "torch_cudnn_benchmark",
                  "torch_cudnn_deterministic", "torch_cudnn_allow_tf32", "torch_matmul_allow_tf32",
                  "torch_float32_matmul_precision", "lightning_version", "torch_version", "torch_cuda_version"}
#: Params that record when or where, not how.
NOT_INPUT_PARAMS = ("execution_start_time", "execution_end_time")


def _path_entries(code: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The code record's JSON list ``key`` (a list of ``{"path": ...}`` entries)."""
    raw = code.get(key)
    if not raw:
        return []
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as err:
        raise CliError(f"the record's {key} is not JSON ({err})", EXIT_RECORD_INCOMPLETE) from err
    return [e for e in entries if isinstance(e, dict) and e.get("path")]


def untracked_entries(code: dict[str, Any]) -> list[dict[str, Any]]:
    return _path_entries(code, "untracked_files")


_STATE_KEYS = ("git_commit", "git_diff_sha256", "git_untracked_count")


def editable_states(code: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The recorded state of each editable install the run imported from, by ``name (path)``: its
    repository's commit, diff sha256 and untracked count; one in the recorded repository has the
    run's own commit and diff."""
    import hashlib

    # a run without uncommitted changes records no diff: its sha256 is the empty diff's
    own = {"git_commit": code.get("git_commit"),
           "git_diff_sha256": code.get("git_diff_sha256") or (hashlib.sha256(b"").hexdigest()
                                                              if code.get("git_commit") and not code.get("git_error")
                                                              else None)}
    out = {}
    for e in _path_entries(code, "editable_sources"):
        state = dict(own) if e.get("in_repository") else {k: e.get(k) for k in (*_STATE_KEYS, "git") if k in e}
        out[f"{e.get('name')} ({e['path']})"] = state
    return out


def editable_mismatches(code: dict[str, Any]) -> list[str]:
    """Each editable install the run imported from whose folder is not as recorded now: the re-run
    imports it from that live folder, not from the recorded commit."""
    from prov4ml_lightning.capture.code import source_folder_state

    out = []
    for key, recorded in editable_states(code).items():
        path = key[key.index(" (") + 2:-1]
        if recorded.get("git") is False:
            out.append(f"editable install {key}: not in a git repository when recorded; its current source is "
                       "used, unchecked")
            continue
        now = source_folder_state(Path(path)) if Path(path).is_dir() else {"git": False}
        if now.get("git") is False:
            out.append(f"editable install {key}: the folder is no longer a git checkout")
            continue
        changed = [f"{k} {recorded.get(k)} -> {now.get(k)}" for k in _STATE_KEYS
                   if k in recorded and recorded.get(k) != now.get(k)]
        if changed:
            out.append(f"editable install {key}: its source changed since the run ({'; '.join(changed)}); the "
                       "re-run imports it from that folder as it is now")
    return out


def compare_environment(recorded: dict[str, Any], recorded_packages: dict[str, str] | None,
                        here: dict[str, Any] | None = None) -> list[str]:
    """Every difference between the recorded environment and ``here`` (an
    :func:`~prov4ml_lightning.capture.environment.interpreter_snapshot`, the venv's with ``--venv``;
    default this process's): interpreter and its flags, every package of the lock (missing, extra,
    other version or source). The torch flags and library versions a script sets or imports are
    compared only when ``here`` has them."""
    from prov4ml_lightning.capture.environment import interpreter_snapshot, read_lock, torch_flags

    now: dict[str, Any] = here if here is not None else {**interpreter_snapshot(), **torch_flags()}
    out = []
    for key in ENV_KEYS:
        if key not in recorded or key in SET_BY_SCRIPT:  # the new run's record says (the report compares)
            continue
        value = now.get(key)
        if isinstance(value, list):
            value = json.dumps(value)
        if str(recorded[key]) != str(value):
            out.append(f"{key}: recorded {recorded[key]!r}, here {value!r}")
    if recorded_packages is None:
        out.append("packages: the record has no package list")
        return out
    here_lock = read_lock(str(now.get("packages") or ""))
    installed = {k: p["version"] if p["source"] == "index" else f"{p['version']} ({p['requirement']})"
                 for k, p in here_lock.items()}
    for key in sorted(set(recorded_packages) | set(installed)):
        a, b = recorded_packages.get(key), installed.get(key)
        if a == b:
            continue
        if a is None:
            out.append(f"package {key}: not in the record, here {b}")
        elif b is None:
            out.append(f"package {key}: recorded {a}, not installed here")
        else:
            out.append(f"package {key}: recorded {a}, here {b}")
    return out


def _points(view: Any) -> dict[tuple[str, str], dict[int, float]]:
    from prov4ml_lightning.tracking.writer import read_sidecar

    path = view.sibling(view.run_attr("metrics_file"))
    out: dict[tuple[str, str], dict[int, float]] = {}
    if path is None:
        return out
    for key, ctx, _mkey, step, value, _ts in read_sidecar(path):
        out.setdefault((ctx, key), {})[step] = value
    return out


def metric_divergence(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Max absolute and relative (to the larger magnitude) difference over the steps both series
    hold; ``identical`` when every common value is equal (NaN equals NaN)."""
    common = sorted(set(a) & set(b))
    max_abs = max_rel = 0.0
    identical = True
    for step in common:
        x, y = a[step], b[step]
        if (math.isnan(x) and math.isnan(y)) or x == y:
            continue
        identical = False
        diff = abs(x - y)
        scale = max(abs(x), abs(y))
        max_abs = max(max_abs, diff if not math.isnan(diff) else math.inf)
        max_rel = max(max_rel, diff / scale if scale and not math.isnan(diff) else math.inf)
    return {"common_steps": len(common), "steps_only_original": len(set(a) - set(b)),
            "steps_only_reproduction": len(set(b) - set(a)), "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "identical": identical and len(common) == len(a) == len(b)}


def _untracked_digests(code: dict[str, Any]) -> dict[str, Any]:
    return {e["path"]: e.get("sha256") for e in untracked_entries(code)}


def code_differences(oc: dict[str, Any], nc: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The differences between two runs' code records: commit, diff, script, untracked files, and
    the state of each editable install they imported from (the repository's own: the run's commit
    and diff)."""
    code_diffs: dict[str, tuple[Any, Any]] = {k: (oc.get(k), nc.get(k))
                                              for k in ("git_commit", "git_diff_sha256", "script_sha256")
                                              if oc.get(k) != nc.get(k)}
    if _untracked_digests(oc) != _untracked_digests(nc):
        code_diffs["untracked_files"] = (_untracked_digests(oc), _untracked_digests(nc))
    oes, nes = editable_states(oc), editable_states(nc)
    for key in sorted(set(oes) | set(nes)):  # the repository's own install has the run's commit and diff
        a, b = oes.get(key) or {}, nes.get(key) or {}
        shared = [k for k in _STATE_KEYS if k in a and k in b] or list(_STATE_KEYS)
        if [a.get(k) for k in shared] != [b.get(k) for k in shared]:
            code_diffs[f"editable {key}"] = ({k: a.get(k) for k in shared}, {k: b.get(k) for k in shared})
    return code_diffs


def build_report(old: Any, new: Any, plan: Any, returncode: int) -> dict[str, Any]:
    """The comparison of the original run (``old``) and its reproduction (``new``), run as ``plan``
    (:class:`~prov4ml_lightning.cli.reproduce.Plan`) says."""
    from prov4ml_lightning.cli._view import datasets_by_name, final_weights

    inputs: dict[str, dict[str, Any]] = {}
    oc, nc = old.code, new.code
    inputs["code"] = code_differences(oc, nc)
    od, nd = datasets_by_name(old), datasets_by_name(new)
    data_diffs = {}
    for key in sorted(set(od) | set(nd)):
        fa, fb = (od.get(key) or {}).get("fingerprint"), (nd.get(key) or {}).get("fingerprint")
        if fa != fb or fa is None:
            data_diffs[key] = (fa, fb)
    inputs["data"] = data_diffs
    op = {k: v for k, v in old.params.items() if not k.startswith(NOT_INPUT_PARAMS)}
    np_ = {k: v for k, v in new.params.items() if not k.startswith(NOT_INPUT_PARAMS)}
    inputs["params"] = {k: (op.get(k), np_.get(k)) for k in sorted(set(op) | set(np_)) if op.get(k) != np_.get(k)}
    oe, ne = old.environment, new.environment
    env_diffs = {k: (oe.get(k), ne.get(k)) for k in ENV_KEYS if oe.get(k) != ne.get(k)}
    opk, npk = old.packages or {}, new.packages or {}
    env_diffs.update({f"package {k}": (opk.get(k), npk.get(k)) for k in sorted(set(opk) | set(npk))
                      if opk.get(k) != npk.get(k)})
    inputs["environment"] = env_diffs
    ops, nps = _points(old), _points(new)
    metrics = {f"{ctx}/{key}": metric_divergence(ops[(ctx, key)], nps[(ctx, key)])
               for ctx, key in sorted(set(ops) & set(nps))}
    missing = sorted(f"{c}/{k}" for c, k in set(ops) ^ set(nps))
    ow, nw = final_weights(old), final_weights(new)
    weights = {name: {"original": ow.get(name), "reproduction": nw.get(name),
                      "identical": ow.get(name) is not None and ow.get(name) == nw.get(name)}
               for name in sorted(set(ow) | set(nw))}
    inputs_identical = not any(inputs.values())
    weights_identical = bool(weights) and all(w["identical"] for w in weights.values())
    metrics_identical = not missing and all(m["identical"] for m in metrics.values())
    return {
        "original": {"run_id": plan.run_id, "prov": str(old.path)},
        "reproduction": {"run_id": new.run_attr("run_id"), "prov": str(new.path), "workdir": str(plan.workdir),
                         "command": shlex.join(plan.argv), "returncode": returncode,
                         "venv": str(plan.venv.path) if plan.venv is not None else None},
        "inputs_identical": inputs_identical, "inputs": {k: _jsonable(v) for k, v in inputs.items()},
        "environment_mismatches_before_run": plan.mismatches,
        "metrics_identical": metrics_identical, "metrics": metrics, "metrics_in_one_run_only": missing,
        "final_weights_identical": weights_identical, "final_weights": weights,
        "reproduced": inputs_identical and (weights_identical if weights else metrics_identical),
        "notes": plan.notes,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as text (also its Markdown file: a fenced-free plain list reads as Markdown)."""
    yes = {True: "identical", False: "DIFFERENT"}
    out = [f"# Reproduction of run {report['original']['run_id']}", "",
           f"- reproduction run: {report['reproduction']['run_id']} ({report['reproduction']['prov']})",
           f"- command: `{report['reproduction']['command']}` (exit status {report['reproduction']['returncode']})",
           "- interpreter: " + (f"the virtual environment {report['reproduction']['venv']}, built from the run's lock"
                                if report["reproduction"].get("venv") else "the one running prov4ml reproduce"),
           f"- inputs: {yes[report['inputs_identical']]}"]
    for section, diffs in report["inputs"].items():
        out.append(f"  - {section}: {'identical' if not diffs else f'{len(diffs)} difference(s)'}")
        out += [f"    - {k}: {v[0]!r} -> {v[1]!r}" for k, v in list(diffs.items())[:20]]
    out.append(f"- metrics: {yes[report['metrics_identical']]}")
    for key, m in report["metrics"].items():
        out.append(f"  - {key}: {m['common_steps']} common steps, max abs diff {m['max_abs_diff']:.3g}, "
                   f"max rel diff {m['max_rel_diff']:.3g}" + ("" if m["identical"] else " (differs)"))
    out += [f"  - {k}: logged by one run only" for k in report["metrics_in_one_run_only"]]
    weights = report["final_weights"]
    out.append(f"- final weights: {yes[report['final_weights_identical']] if weights else 'no model logged'}")
    out += [f"  - {name}: {w['original']} -> {w['reproduction']}" for name, w in weights.items()]
    if report["environment_mismatches_before_run"]:
        out.append(f"- environment mismatches seen before the run: {len(report['environment_mismatches_before_run'])}")
        out += [f"  - {m}" for m in report["environment_mismatches_before_run"]]
    out += [f"- note: {n}" for n in report["notes"]]
    out.append(f"- verdict: {'REPRODUCED' if report['reproduced'] else 'NOT REPRODUCED'}")
    return out


def save_report(report: dict[str, Any], new: Any) -> list[Path]:
    """Write the report beside the new run's PROV document and log it to its MLflow run."""
    new_id = report["reproduction"]["run_id"]
    folder = new.path.parent
    paths = [folder / f"reproduction_{new_id}.json", folder / f"reproduction_{new_id}.md"]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    paths[1].write_text("\n".join(report_lines(report)) + "\n", encoding="utf-8")
    uri = new.run_attr("tracking_uri")
    if uri and "***" not in str(uri):
        try:
            from prov4ml_lightning.sinks.mlflow.attach import attach_artifacts

            attach_artifacts(str(uri), str(new_id), paths, "reproduction")
        except Exception as err:  # the report stays on disk beside the document
            warn(f"note: the report could not be logged to MLflow run {new_id} ({err}); it is at {paths[0]}")
    return paths

