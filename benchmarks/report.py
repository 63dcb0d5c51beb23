"""Turn the JSON of peers.py, micro.py and scaling.py into the tables and PNG plots of docs/performance.md.

The tables replace the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` in
docs/performance.md (the analysis around them is written by hand); plots go to docs/perf/.

Usage::

    python benchmarks/report.py --results benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
START, END = "<!-- results:start -->", "<!-- results:end -->"

sys.path.insert(0, str(HERE))
from _workload import expected_points  # noqa: E402
from peers import CONFIGS, LABELS  # noqa: E402


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _runs_by_config(data: dict[str, Any], name: str) -> dict[str, list[dict[str, Any]]]:
    """The successful runs of a peers.py result, by config; ``bare`` must be among them."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in data["runs"]:
        if "error" not in r:
            by.setdefault(r["cfg"], []).append(r)
    if "bare" not in by:
        raise SystemExit(f"{name} has no successful bare runs")
    return by


def peers_table(data: dict[str, Any]) -> tuple[str, dict[str, dict[str, float]]]:
    by = _runs_by_config(data, "peers.json")
    bare_step = _med([r["step_s"] for r in by["bare"]])
    bare_end = _med([r["end_s"] for r in by["bare"]])
    bare_single = _med([r.get("step_median_s", float("nan")) for r in by["bare"]])
    bare_start = _med([r["start_s"] for r in by["bare"]])
    expected = expected_points(data["epochs"])
    want = sum(expected.values())
    lines = [
        f"Workload: {data['epochs']} epochs x 250 steps, 2 metrics per step + 1 per validation epoch "
        f"= {want} points to keep; {data['rounds']} rounds, medians. Overheads are against bare Lightning "
        "in the same rounds.",
        "",
        "| config | step, epoch mean (ms) | overhead | rounds' range (ms) | median single step (ms) | overhead "
        "| start (s) | end (s) | end overhead (s) | import (s) | peak RSS (MB) | child procs RSS (MB) "
        "| points kept / expected | all points stored |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, dict[str, float]] = {}
    for cfg in CONFIGS:
        rs = by.get(cfg)
        if not rs:
            why = data.get("skipped", {}).get(cfg) or next(
                (r["error"].strip().splitlines()[-1] for r in data["runs"] if r["cfg"] == cfg and "error" in r), None)
            if why:
                lines.append(f"| {LABELS[cfg]} | not run: {why} |" + " |" * 12)
            continue
        step = _med([r["step_s"] for r in rs])
        steps = [r["step_s"] for r in rs]
        kept = [sum(r["persisted"][k] for k in expected) for r in rs]
        total = _med([r["persisted"]["total"] for r in rs])
        single = _med([r.get("step_median_s", float("nan")) for r in rs])
        summary[cfg] = {"step_ms": step * 1e3, "overhead": step / bare_step - 1,
                        "single_overhead": single / bare_single - 1,
                        "end_over": _med([r["end_s"] for r in rs]) - bare_end}
        lines.append(
            f"| {LABELS[cfg]} | {step * 1e3:.3f} | {100 * (step / bare_step - 1):+.1f}% "
            f"| {min(steps) * 1e3:.2f}-{max(steps) * 1e3:.2f} "
            f"| {single * 1e3:.3f} | {100 * (single / bare_single - 1):+.1f}% "
            f"| {_med([r['start_s'] for r in rs]):.2f} | {_med([r['end_s'] for r in rs]):.2f} "
            f"| {_med([r['end_s'] for r in rs]) - bare_end:+.2f} | {_med([r['import_s'] for r in rs]):.2f} "
            f"| {_med([r['peak_rss_mb'] for r in rs]):.0f} | {_med([r.get('peak_child_rss_mb', 0) for r in rs]):.0f} "
            f"| {min(kept)}-{max(kept)} / {want if cfg != 'bare' else 0} | {total:.0f} |"
        )
    lines += ["", f"bare start (setup to first batch): {bare_start:.2f} s."]
    return "\n".join(lines), summary


def zero_wait_table(data: dict[str, Any]) -> str:
    """Issue 17's table: what a run costs the training process in time and memory, against bare Lightning.

    Whole cost = setup before fit + fit + finalize (``Trainer`` made to ``fit`` returned, as the
    issue's table) minus bare's. Process wall = the child's interpreter start to exit minus bare's:
    it also holds the exit's wait for the MLflow service (and interpreter noise).
    """
    by = _runs_by_config(data, "zero_wait.json")
    bare = by["bare"]
    b_start, b_fit, b_wall, b_rss = (_med([r[k] for r in bare]) for k in ("start_s", "fit_s", "wall_s", "peak_rss_mb"))
    b_epochs = [_med([r["epoch_step_s"][i] for r in bare if len(r["epoch_step_s"]) > i])
                for i in range(max(len(r["epoch_step_s"]) for r in bare))]
    lines = [
        f"Workload: {data['epochs']} epochs x {data.get('steps', 250)} steps, 2 metrics per step, "
        f"{_store_note(data)}; "
        f"{data['rounds']} alternating rounds, medians. Step times per epoch exclude the first epoch's first step.",
        "",
        "| config | start to first batch (s) | over bare | setup + fit + finalize (s) | whole cost over bare (s) "
        "| process wall over bare (s) | worst epoch step vs bare | peak RSS over bare (MB) "
        "| child processes' RSS (MB) | log_model (s) | end_run (s) | MLflow complete after exit (s) | imports mlflow |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cfg in CONFIGS:
        rs = by.get(cfg)
        if not rs:
            continue
        epochs = [_med([r["epoch_step_s"][i] for r in rs if len(r["epoch_step_s"]) > i]) for i in range(len(b_epochs))]
        worst = max(e / b - 1 for e, b in zip(epochs, b_epochs))
        start = _med([r["start_s"] for r in rs])
        lm = [r["log_model_s"] for r in rs if "log_model_s" in r]
        er = [r["end_run_s"] for r in rs if "end_run_s" in r]
        done = [r["mlflow_done_after_exit_s"] for r in rs if "mlflow_done_after_exit_s" in r]
        lines.append(
            f"| {LABELS[cfg]} | {start:.2f} | {start - b_start:+.2f} | {_med([r['fit_s'] for r in rs]):.2f} "
            f"| {_med([r['fit_s'] for r in rs]) - b_fit:+.2f} | {_med([r['wall_s'] for r in rs]) - b_wall:+.2f} "
            f"| {100 * worst:+.1f}% "
            f"| {_med([r['peak_rss_mb'] for r in rs]) - b_rss:+.0f} | {_med([r['peak_child_rss_mb'] for r in rs]):.0f} "
            f"| {f'{_med(lm):.2f}' if lm else ''} | {f'{_med(er):.2f}' if er else ''} "
            f"| {f'{_med(done):.2f}' if done else ''} "
            f"| {'yes' if any(r.get('mlflow_imported') for r in rs) else 'no'} |"
        )
    return "\n".join(lines)


def _store_note(data: dict[str, Any]) -> str:
    if "template_store" in data:
        return "a created SQLite store copied per run" if data["template_store"] else "a new SQLite store per run"
    return "a new SQLite store per run" if data.get("fresh_store") else "a created SQLite store copied per run"


#: issue 27's targets, against bare Lightning (loop, whole-tree CPU) or CSVLogger (process wall)
TARGETS = {"loop": 0.05, "wall_over_csv_s": 1.0, "cpu_over_bare_s": 1.5, "service_rss_mb": 250.0}


def whole_process_table(data: dict[str, Any]) -> str:
    """Issue 27's table: what a run costs the whole process tree, torch at its default threads.

    Loop = the epoch-mean step time (``step_s``) against bare's; process wall = the training
    process's spawn to exit (it includes ``end_run``'s wait for MLflow); tree CPU = user + system
    seconds of the training process and every process it started (the MLflow service, MLflow's
    requirement inference), summed by ``wait4``; child RSS = the peak summed RSS of those children
    while the fit ran; points = what each store holds once the whole tree has exited.
    """
    by = _runs_by_config(data, "whole_process.json")
    b_step, b_wall, b_cpu = (_med([r[k] for r in by["bare"]]) for k in ("step_s", "wall_s", "tree_cpu_s"))
    csv_wall = _med([r["wall_s"] for r in by["csv"]]) if "csv" in by else float("nan")
    expected = expected_points(data["epochs"])
    threads = {r.get("torch_threads") for rs in by.values() for r in rs}
    lines = [
        f"Workload: {data['epochs']} epochs x {data.get('steps', 250)} steps, every step logged; torch threads "
        f"{', '.join(map(str, sorted(t for t in threads if t)))} ({data.get('threads', 'default')}) on "
        f"{data.get('cpu_count', '?')} cores; {_store_note(data)}; {data['rounds']} alternating rounds, medians.",
        "",
        "| config | loop ms/step over bare | process wall over bare (s) | over CSVLogger (s) "
        "| whole-tree CPU over bare (s) | children's peak RSS (MB) | points after exit (train/mae/val) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for cfg in CONFIGS:
        rs = by.get(cfg)
        if not rs:
            continue
        step, wall, cpu = (_med([r[k] for r in rs]) for k in ("step_s", "wall_s", "tree_cpu_s"))
        points = "/".join(str(min(r["persisted"][k] for r in rs)) for k in expected) if cfg != "bare" else ""
        lines.append(
            f"| {LABELS[cfg]} | {(step - b_step) * 1e3:+.2f} ({100 * (step / b_step - 1):+.1f}%) "
            f"| {wall - b_wall:+.2f} | {wall - csv_wall:+.2f} | {cpu - b_cpu:+.2f} "
            f"| {_med([r.get('peak_child_rss_mb', 0) for r in rs]):.0f} | {points} |")
    return "\n".join(lines)


def micro_table(data: dict[str, Any]) -> str:
    lines = ["| case | calls | median per call (us) | p95 of 1000-call chunks (us) | end_run after (s) "
             "| points sent to MLflow |", "|---|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        lines.append(f"| {r['case']} | {r['calls']} | {r['median_us']:.2f} | {r['p95_us']:.2f} "
                     f"| {r.get('end_run_s', float('nan')):.2f} | {r.get('points_sent', '-')} |")
    return "\n".join(lines)


def scaling_tables(data: dict[str, Any]) -> str:
    lines = ["| points | mode | logging (s) | end_run (s) | PROV JSON (KB) | sidecar CSV (MB) | peak RSS (MB) "
             "| child processes' RSS (MB) | sent to MLflow |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["points"]:
        if "error" in r:
            lines.append(f"| {r['args']} | failed | " + " |" * 7)
            continue
        lines.append(f"| {r['n']:,} | {r['mode']} | {r['log_s']:.2f} | {r['end_s']:.2f} | {r['prov_bytes'] / 1024:.0f} "
                     f"| {r['sidecar_bytes'] / 2**20:.1f} | {r['peak_rss_mb']:.0f} | {r['peak_child_rss_mb']:.0f} "
                     f"| {r['points_sent']:,} |")
    lines += ["", "| epochs (4 batches each) | fit (s) | end of fit (s) | PROV JSON (KB) |", "|---:|---:|---:|---:|"]
    for r in data["epochs"]:
        if "error" in r:
            lines.append(f"| {r['args']} | failed | | |")
            continue
        lines.append(f"| {r['epochs']} | {r['fit_s']:.1f} | {r['end_s']:.2f} | {r['prov_bytes'] / 1024:.0f} |")
    return "\n".join(lines)


def plots(peers: dict[str, Any] | None, scaling: dict[str, Any] | None, summary: dict[str, dict[str, float]],
          out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []
    if summary:
        cfgs = [c for c in CONFIGS if c in summary and c != "bare"]
        fig, ax = plt.subplots(figsize=(8, 4))
        ys = range(len(cfgs))
        ax.barh([y - 0.2 for y in ys], [100 * summary[c]["overhead"] for c in cfgs], height=0.4,
                color=["tab:green" if c.startswith("prov4ml") else "tab:gray" for c in cfgs], label="epoch mean")
        ax.barh([y + 0.2 for y in ys], [100 * summary[c]["single_overhead"] for c in cfgs], height=0.4,
                color=["yellowgreen" if c.startswith("prov4ml") else "silver" for c in cfgs],
                label="median single step")
        ax.set_yticks(list(ys), [LABELS[c] for c in cfgs])
        ax.axvline(2, color="tab:red", ls="--", lw=1, label="2% target")
        ax.axvline(0, color="black", lw=0.5)
        ax.set_xlabel("steady-state time per step over bare Lightning (%, symlog)")
        ax.set_xscale("symlog", linthresh=10)
        ticks = [-10, -5, 0, 2, 5, 10, 100, 500]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.invert_yaxis()
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.legend(loc="lower center", ncol=3, fontsize=8)
        fig.savefig(out / "peers_step_overhead.png", dpi=110)
        plt.close(fig)
        made.append("peers_step_overhead.png")
    if scaling:
        ok = [r for r in scaling["points"] if "error" not in r]
        burst = sorted((r for r in ok if r["mode"] == "burst"), key=lambda r: r["n"])
        paced = sorted((r for r in ok if r["mode"] == "paced"), key=lambda r: r["n"])
        epochs = sorted((r for r in scaling["epochs"] if "error" not in r), key=lambda r: r["epochs"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        ax = axes[0]
        for rows, label in ((burst, "burst (tight loop)"), (paced, f"paced ({scaling['rate']:.0f} points/s)")):
            if rows:
                ax.loglog([r["n"] for r in rows], [r["end_s"] for r in rows], "o-", label=f"end_run, {label}")
        if burst:
            ax.loglog([r["n"] for r in burst], [r["prov_bytes"] / 2**20 for r in burst], "s--",
                      label="PROV JSON size (MB)")
        ax.axhline(1, color="tab:red", ls=":", lw=1)
        ax.set_xlabel("metric points in the run")
        ax.set_ylabel("seconds / MB")
        ax.legend(fontsize=8)
        ax = axes[1]
        if epochs:
            ax.loglog([r["epochs"] for r in epochs], [r["end_s"] for r in epochs], "o-", label="end of fit (s)")
            ax.loglog([r["epochs"] for r in epochs], [r["prov_bytes"] / 2**20 for r in epochs], "s--",
                      label="PROV JSON size (MB)")
            ax.set_xlabel("epochs (Prov4MLCallback)")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=110)
        plt.close(fig)
        made.append("scaling.png")
        big = next((r for r in burst if r.get("rss")), None)
        if big:
            fig, ax = plt.subplots(figsize=(8, 3.5))
            t = [s[0] for s in big["rss"]]
            ax.plot(t, [s[1] for s in big["rss"]], label="training process")
            ax.plot(t, [s[2] for s in big["rss"]], label="upload child")
            ax.axvline(big["start_s"] + big["log_s"], color="gray", ls="--", lw=1, label="end_run called")
            ax.set_xlabel("seconds")
            ax.set_ylabel("RSS (MB)")
            ax.set_title(f"memory while logging {big['n']:,} points as fast as possible, then end_run")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / "memory_1e6.png", dpi=110)
            plt.close(fig)
            made.append("memory_1e6.png")
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--doc", default=str(DOCS / "performance.md"))
    args = parser.parse_args(argv)
    res = Path(args.results)

    def load(name: str) -> dict[str, Any] | None:
        p = res / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    peers, micro, scaling = load("peers"), load("micro"), load("scaling")
    parts = []
    summary: dict[str, dict[str, float]] = {}
    if peers:
        table, summary = peers_table(peers)
        parts += ["### Peers: the same Lightning workload", "", table, ""]
    for name, title in (("zero_wait", "a created store"), ("zero_wait_fresh", "a new store per run")):
        zero = load(name)
        if zero:
            parts += [f"### Zero wait (issue 17): the training process's cost of a run, {title}", "",
                      zero_wait_table(zero), ""]
    whole = load("whole_process")
    if whole:
        parts += ["### The whole process (issue 27): torch's default threads, every default", "",
                  whole_process_table(whole), ""]
    if micro:
        parts += ["### Hot path", "", micro_table(micro), ""]
    if scaling:
        parts += ["### Scaling", "", scaling_tables(scaling), ""]
    made = plots(peers, scaling, summary, DOCS / "perf")
    parts += [f"![{m}](perf/{m})" for m in made]
    loads = {k: v.get("load_before") for k, v in (("peers", peers), ("micro", micro), ("scaling", scaling)) if v}
    parts += ["", "Load average (1, 5, 15 min) when each part started: "
              + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in loads.items() if v)]
    block = "\n".join([START, *parts, END])
    doc = Path(args.doc)
    text = doc.read_text() if doc.exists() else f"# Performance\n\n{START}\n{END}\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text += "\n" + block + "\n"
    doc.write_text(text)
    print(f"wrote {doc} and {len(made)} plots", file=sys.stderr)


if __name__ == "__main__":
    main()
