"""Compare eval runs on the same items:
`python -m eval.compare runs/eval/base runs/eval/sft [runs/eval/grpo ...] --out runs/compare`.

Writes `<out>/comparison.md`, `comparison.csv`, `comparison.json` and `accuracy_by_layer.png`:
every score per system and per layer / modality / sub-category, the paired difference against the
first system with an exact McNemar test (Bonferroni over the compared systems), the random
baseline and the exact p-value against it (Bonferroni over all systems). Runs made with
`--audio none|noise|silence` are checked for language priors. When a run's metrics.json has them,
MMAR-Rubrics scores (`python -m eval.rubrics`) stand beside the accuracies and the option-order
robustness (`eval.run --option_orders K`) gets its own table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from common.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from common.logging_utils import setup_logging
from eval import stats
from eval.metrics import METRICS, ScoredItem, available_metrics, cell
from eval.score import load_rows, score_rows

log = logging.getLogger(__name__)

SCOPE_TYPES = ("overall", "category", "modality", "sub-category", "tag")
ALPHA = 0.05


class CompareError(ValueError):
    """Runs that cannot be compared (missing files, different item sets)."""


@dataclass
class System:
    name: str
    path: Path
    items: dict[str, ScoredItem]
    run_info: dict
    metrics: dict  # the run's metrics.json ({} when absent): rubric and option-order results

    @property
    def audio_mode(self) -> str:
        return self.run_info.get("audio_mode", "real")


def _flag(item: ScoredItem, metric: str) -> bool:
    return METRICS[metric].flag(item)


def _primary(rows: list[dict]) -> str:
    """The first METRICS entry the rows hold (choice_acc when every run knows the options)."""
    return next(m for m in METRICS if any(r["metric"] == m for r in rows))


def load_system(path: str | Path, name: str) -> System:
    """Read one eval run dir (predictions.jsonl required, run_info.json optional)."""
    path = Path(path)
    preds = path / "predictions.jsonl"
    if not preds.exists():
        raise CompareError(f"{path}: no predictions.jsonl (is this an eval.run output dir?)")
    items = score_rows(load_rows(preds), source=str(preds))
    info_path = path / "run_info.json"
    run_info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    metrics_path = path / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
    return System(name, path, {x.id: x for x in items}, run_info, metrics)


def _names(paths: list[str]) -> list[str]:
    """Run dir basenames, made unique with the parent folder's name where they clash."""
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{Path(p).resolve().parent.name}/{Path(p).resolve().name}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def check_same_items(systems: list[System]) -> list[str]:
    """The shared id list (first system's order); differing item sets are an error."""
    base = systems[0]
    for s in systems[1:]:
        if set(s.items) != set(base.items):
            only_base = sorted(set(base.items) - set(s.items))
            only_s = sorted(set(s.items) - set(base.items))
            raise CompareError(
                f"cannot pair {base.name!r} ({len(base.items)} items) with {s.name!r} ({len(s.items)} items): "
                f"{len(only_base)} id(s) only in {base.name!r} (e.g. {only_base[:3]}), {len(only_s)} only in "
                f"{s.name!r} (e.g. {only_s[:3]}); evaluate both on the same split and --limit"
            )
    return list(base.items)


def _scopes(items: list[ScoredItem]) -> list[tuple[str, str, list[str]]]:
    """(scope type, scope value, ids) for overall and every group value."""
    out = [("overall", "all", [x.id for x in items])]
    for scope_type in SCOPE_TYPES[1:]:
        members: dict[str, list[str]] = {}
        for x in items:
            for v in x.groups(scope_type):
                members.setdefault(v, []).append(x.id)
        out += [(scope_type, v, ids) for v, ids in sorted(members.items())]
    return out


def _row(scope: tuple[str, str, list[str]], s: System, base: System, metric: str, n_sys: int) -> dict:
    scope_type, value, ids = scope
    flags = [_flag(s.items[i], metric) for i in ids]
    c = cell(flags, [s.items[i].n_choices for i in ids])
    row = {
        "scope_type": scope_type, "scope": value, "system": s.name, "metric": metric,
        "correct": c["correct"], "total": c["total"], "accuracy": c["accuracy"],
        "ci_low": c["ci95"][0], "ci_high": c["ci95"][1], "random_accuracy": c["random_accuracy"],
        "p_vs_random": c["p_vs_random"], "p_vs_random_bonf": stats.bonferroni(c["p_vs_random"], n_sys),
        "delta_vs_first": None, "mcnemar_first_only": None, "mcnemar_system_only": None,
        "mcnemar_p": None, "mcnemar_p_bonf": None,
    }  # fmt: skip
    if s is not base:
        base_flags = [_flag(base.items[i], metric) for i in ids]
        mc = stats.mcnemar_exact(base_flags, flags)
        base_acc = 100.0 * sum(base_flags) / len(ids)
        row.update(
            delta_vs_first=round(c["accuracy"] - base_acc, 4),
            mcnemar_first_only=mc["a_only"],
            mcnemar_system_only=mc["b_only"],
            mcnemar_p=mc["p_value"],
            mcnemar_p_bonf=stats.bonferroni(mc["p_value"], n_sys - 1),
        )
    return row


def comparison_rows(systems: list[System]) -> list[dict]:
    """One row per (scope, system, metric); choice_acc only when every run knows the options."""
    ids = check_same_items(systems)
    items = [systems[0].items[i] for i in ids]
    metrics = available_metrics(x for s in systems for x in s.items.values())
    return [
        _row(scope, s, systems[0], metric, len(systems))
        for scope in _scopes(items)
        for s in systems
        for metric in metrics
    ]


def _fmt_p(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def rubric_score(system_metrics: dict, scope_type: str, scope: str) -> float | None:
    """The MMAR-Rubrics score (x100, all items) of a scope, or None when the run has none."""
    rub = system_metrics.get("rubrics")
    if not rub:
        return None
    cell_ = rub["overall"] if scope_type == "overall" else rub.get(scope_type, {}).get(scope)
    return None if cell_ is None else cell_["score"]


def markdown_table(
    rows: list[dict],
    scope_types: tuple[str, ...] = ("overall", "category", "modality"),
    systems: list[System] | None = None,
) -> str:
    """Markdown table: one line per scope and system, every metric side by side, and the
    MMAR-Rubrics score when some run has one."""
    by_key: dict[tuple, dict] = {}
    for r in rows:
        by_key.setdefault((r["scope_type"], r["scope"], r["system"]), {})[r["metric"]] = r
    metrics = [m for m in METRICS if any(r["metric"] == m for r in rows)]
    run_metrics = {s.name: s.metrics for s in systems or []}
    with_rubrics = any(m.get("rubrics") for m in run_metrics.values())
    head = ["scope", "system", "n"]
    for m in metrics:
        head += [f"{m} % [95% CI]", f"Δ {m} (McNemar p, Bonf.)"]
    if with_rubrics:
        head.append("rubric score")
    head += ["random %", "p vs random (Bonf.)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (scope_type, scope, system), per in by_key.items():
        if scope_type not in scope_types:
            continue
        first = per[metrics[0]]
        cells = [scope if scope_type == "overall" else f"{scope_type}: {scope}", system, str(first["total"])]
        for m in metrics:
            r = per[m]
            cells.append(f"{r['accuracy']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]")
            delta = r["delta_vs_first"]
            cells.append("—" if delta is None else f"{delta:+.1f} (p={_fmt_p(r['mcnemar_p_bonf'])})")
        if with_rubrics:
            rub = rubric_score(run_metrics.get(system, {}), scope_type, scope)
            cells.append("—" if rub is None else f"{rub:.1f}")
        cells += [f"{first['random_accuracy']:.1f}", _fmt_p(first["p_vs_random_bonf"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def bar_chart_png(rows: list[dict]) -> bytes:
    """Grouped bars of accuracy per layer (plus overall) per system, Wilson 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on clusters or CI
    import matplotlib.pyplot as plt

    metric = _primary(rows)
    sel = [r for r in rows if r["metric"] == metric and r["scope_type"] in ("overall", "category")]
    scopes = list(dict.fromkeys(r["scope"] for r in sel))
    systems = list(dict.fromkeys(r["system"] for r in sel))
    get = {(r["scope"], r["system"]): r for r in sel}
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(scopes) * max(1, len(systems) / 2)), 4.5))
    for k, system in enumerate(systems):
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(scopes))]
        acc = [get[(s, system)]["accuracy"] for s in scopes]
        err = [
            [a - get[(s, system)]["ci_low"] for s, a in zip(scopes, acc)],
            [get[(s, system)]["ci_high"] - a for s, a in zip(scopes, acc)],
        ]
        ax.bar(xs, acc, width, yerr=err, capsize=3, label=system)
    for i, s in enumerate(scopes):  # chance level of each layer, as a short dashed line
        rnd = get[(s, systems[0])]["random_accuracy"]
        ax.plot([i - 0.45, i + 0.45], [rnd, rnd], "k--", linewidth=1, label="random" if i == 0 else None)
    ax.set_xticks(range(len(scopes)), [s.replace(" Layer", "") for s in scopes], rotation=15)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{metric} per layer (95% Wilson CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def _same_model(a: System, b: System) -> bool:
    keys = ("model", "adapter")
    return all(a.run_info.get(k) == b.run_info.get(k) for k in keys) and bool(a.run_info.get("model"))


def ablation_notes(systems: list[System], rows: list[dict]) -> list[str]:
    """Statements about runs without real audio: above chance, and accuracy kept vs with audio."""
    metric = _primary(rows)
    overall = {r["system"]: r for r in rows if r["scope_type"] == "overall" and r["metric"] == metric}
    ids = list(systems[0].items)
    notes = []
    for s in systems:
        if s.audio_mode == "real":
            continue
        o = overall[s.name]
        if o["p_vs_random_bonf"] < ALPHA:
            notes.append(
                f"{s.name} (audio={s.audio_mode}) scores {o['accuracy']:.1f}% vs {o['random_accuracy']:.1f}% "
                f"random (p={_fmt_p(o['p_vs_random_bonf'])}, Bonf.): above chance without the audio, i.e. "
                "it answers partly from language priors (question/option text)."
            )
        for ref in systems:
            if ref.audio_mode != "real" or not _same_model(s, ref):
                continue
            mc = stats.mcnemar_exact(
                [_flag(ref.items[i], metric) for i in ids], [_flag(s.items[i], metric) for i in ids]
            )
            delta = o["accuracy"] - overall[ref.name]["accuracy"]
            kept = delta >= 0 or mc["p_value"] >= ALPHA
            verdict = (
                "keeps its accuracy without the audio: gains are not evidence of listening (language priors)"
                if kept
                else "loses accuracy without the audio: the model uses it"
            )
            notes.append(
                f"{s.name} vs {ref.name}: {delta:+.1f} pp without audio (McNemar p={_fmt_p(mc['p_value'])}); {verdict}."
            )
    return notes


def option_orders_table(systems: list[System]) -> str:
    """Markdown: accuracy over cyclic option orders per run that was evaluated with several."""
    runs = [(s, s.metrics["option_orders"]) for s in systems if s.metrics.get("option_orders")]
    if not runs:
        return ""
    lines = [
        "Option-order robustness (`eval.run --option_orders K`, cyclic rotations of the options):",
        "",
        "| system | orders | metric | mean % | std | min % | max % | right under every order % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, o in runs:
        lines.append(
            f"| {s.name} | {o['orders']} | {o['metric']} | {o['mean_accuracy']:.1f} | {o['std_accuracy']:.1f} | "
            f"{o['min_accuracy']:.1f} | {o['max_accuracy']:.1f} | {o['all_orders_correct']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _log_wandb(project: str, out: Path, rows: list[dict], png: Path, systems: list[System]) -> None:
    try:
        import wandb
    except ImportError as e:  # pragma: no cover - wandb is a dependency, but keep the error clear
        raise CompareError("--wandb needs the wandb package (pip install wandb)") from e
    from common.tracking import wandb_mode

    run = wandb.init(
        project=project, name=f"compare-{out.name}", job_type="compare", dir=str(out), mode=wandb_mode()
    )
    table = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
    logged = {"compare/table": table, "compare/accuracy_by_layer": wandb.Image(str(png))}
    for s in systems:  # rubric and option-order scores per system, where the runs have them
        if s.metrics.get("rubrics"):
            logged[f"compare/{s.name}/rubrics/overall"] = s.metrics["rubrics"]["overall"]["score"]
        if s.metrics.get("option_orders"):
            logged[f"compare/{s.name}/option_orders/mean_accuracy"] = s.metrics["option_orders"][
                "mean_accuracy"
            ]
            logged[f"compare/{s.name}/option_orders/all_orders_correct"] = s.metrics["option_orders"][
                "all_orders_correct"
            ]
    run.log(logged)
    run.finish()


def _systems_header(systems: list[System]) -> str:
    lines = [f"Baseline for Δ and McNemar: **{systems[0].name}** ({len(systems[0].items)} paired items). "
             f"p-values are Bonferroni-adjusted over {max(1, len(systems) - 1)} comparison(s) (McNemar) "
             f"and {len(systems)} system(s) (vs random).", ""]  # fmt: skip
    for s in systems:
        adapter = s.run_info.get("adapter") or "none"
        lines.append(
            f"- {s.name}: model `{s.run_info.get('model')}`, adapter `{adapter}`, audio={s.audio_mode}"
        )
    return "\n".join(lines) + "\n\n"


def compare(paths: list[str], out: str | Path, *, wandb_project: str | None = None) -> dict:
    """Write the comparison files under `out`; returns the comparison.json content."""
    if len(paths) < 1:
        raise CompareError("give at least one eval run dir")
    out = Path(out)
    systems = [load_system(p, n) for p, n in zip(paths, _names(paths))]
    rows = comparison_rows(systems)
    md = _systems_header(systems) + markdown_table(rows, systems=systems)
    orders = option_orders_table(systems)
    if orders:
        md += "\n" + orders
    notes = ablation_notes(systems, rows)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(out / "comparison.md", md)
    atomic_write_text(out / "comparison.csv", csv_text(rows))
    png = out / "accuracy_by_layer.png"
    atomic_write_bytes(png, bar_chart_png(rows))
    summary = {
        "baseline": systems[0].name,
        "systems": [
            {
                "name": s.name,
                "path": str(s.path),
                "audio_mode": s.audio_mode,
                "model": s.run_info.get("model"),
                "adapter": s.run_info.get("adapter"),
            }
            for s in systems
        ],  # fmt: skip
        "n_items": len(systems[0].items),
        "alpha": ALPHA,
        "bonferroni": {"p_vs_random": len(systems), "mcnemar": max(1, len(systems) - 1)},
        "rows": rows,
        "option_orders": {
            s.name: s.metrics["option_orders"] for s in systems if s.metrics.get("option_orders")
        },
        "rubrics": {
            s.name: {k: s.metrics["rubrics"][k] for k in ("judge", "overall", "category", "modality")}
            for s in systems
            if s.metrics.get("rubrics")
        },
        "notes": notes,
        "files": {"markdown": "comparison.md", "csv": "comparison.csv", "chart": png.name},
    }
    atomic_write_json(out / "comparison.json", summary)
    if wandb_project:
        _log_wandb(wandb_project, out, rows, png, systems)
    return summary


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="eval run dirs; the first is the baseline")
    ap.add_argument("--out", required=True, help="output dir for the table, chart and comparison.json")
    ap.add_argument("--wandb", action="store_true", help="log the table and chart to W&B")
    ap.add_argument("--wandb_project", default="audio-reasoning-tuner")
    args = ap.parse_args(argv)
    try:
        compare(args.runs, args.out, wandb_project=args.wandb_project if args.wandb else None)
    except (CompareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "comparison.md").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
