"""Turn scored items into `metrics.json`: accuracies per overall / modality / layer / sub-category /
difficulty / tag, with chance level, exact p-value against chance and 95% intervals.

`METRICS` is the one list of scores: eval.run, eval.score, eval.compare and the W&B logging all
iterate it, so a new score is one entry here. Every item counts in every denominator it belongs
to; an item with no prediction is wrong, and the number of such items is reported (the official
MMAR and MMAU scripts drop a row that lacks the prediction key from their denominator instead; a
row with an empty prediction is wrong there too, which is what eval.export writes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from eval import stats
from eval.extract import METHODS

# Group keys of metrics.json, in MMAR's naming ("sub-category" with a hyphen). MMAU's `task` is
# the modality; "difficulty" and "tag" appear only when some item has one.
GROUPS = ("modality", "category", "sub-category", "difficulty", "tag")
OPTIONAL_GROUPS = ("difficulty", "tag")
UNKNOWN = "unknown"


@dataclass
class ScoredItem:
    """One item after extraction and scoring; the unit every metric is computed from."""

    id: str
    n_choices: int
    mmar_correct: bool
    choice_correct: bool | None  # None when the correct option's index is unknown
    parsed: bool  # an option was extracted (instruction following)
    has_prediction: bool
    method: str = "none"
    modality: str = UNKNOWN
    category: str = UNKNOWN
    sub_category: str = UNKNOWN
    difficulty: str | None = None  # MMAU's easy / medium / hard
    tags: list[str] = field(default_factory=list)

    def groups(self, name: str) -> list[str]:
        """The group value(s) of this item under a metrics.json group key."""
        if name == "tag":
            return list(self.tags)
        if name == "difficulty":
            return [self.difficulty] if self.difficulty else []
        return [
            {"modality": self.modality, "category": self.category, "sub-category": self.sub_category}[name]
        ]


@dataclass(frozen=True)
class MetricSpec:
    """One score: how an item is judged, whether it can be judged, and its W&B name."""

    flag: Callable[[ScoredItem], bool]
    wandb: str  # eval/<wandb>/<layer>
    what: str
    judgeable: Callable[[ScoredItem], bool] = lambda x: True


# The scores, in display order. A table is reported only when every item is judgeable, so its
# denominator is never silently smaller than another score's.
METRICS: dict[str, MetricSpec] = {
    "choice_acc": MetricSpec(
        flag=lambda x: bool(x.choice_correct),
        wandb="acc",
        what="the option read from the whole output (eval.extract) has the answer's text",
        judgeable=lambda x: x.choice_correct is not None,
    ),
    "mmar_acc": MetricSpec(
        flag=lambda x: x.mmar_correct,
        wandb="mmar_acc",
        what="MMAR's official token rule on answer_prediction, the <answer> span verbatim",
    ),
}


def available_metrics(items: Iterable[ScoredItem]) -> list[str]:
    """The METRICS names every item can be judged under."""
    items = list(items)
    return [name for name, spec in METRICS.items() if all(spec.judgeable(x) for x in items)]


def cell(flags: list[bool], n_choices: list[int]) -> dict:
    """{"correct", "total", "accuracy"} (percent) plus Wilson CI, chance level and p vs chance."""
    correct, total = int(sum(flags)), len(flags)
    lo, hi = stats.wilson_ci(correct, total)
    return {
        "correct": correct,
        "total": total,
        "accuracy": round(100.0 * correct / total, 4) if total else None,
        "ci95": [round(100 * lo, 4), round(100 * hi, 4)] if total else None,
        "random_accuracy": round(100 * stats.random_expectation(n_choices), 4) if total else None,
        "p_vs_random": stats.poisson_binomial_pvalue([1.0 / k for k in n_choices], correct),
    }


def _table(items: list[ScoredItem], flag: Callable[[ScoredItem], bool], n_boot: int, seed: int) -> dict:
    overall = cell([flag(x) for x in items], [x.n_choices for x in items])
    overall["ci95_bootstrap"] = [
        round(100 * v, 4) for v in stats.bootstrap_ci([flag(x) for x in items], n_boot=n_boot, seed=seed)
    ]
    out: dict = {"overall": overall}
    for group in GROUPS:
        members: dict[str, list[ScoredItem]] = {}
        for x in items:
            for value in x.groups(group):
                members.setdefault(value, []).append(x)
        if group in OPTIONAL_GROUPS and not members:
            continue  # tags and difficulty are optional (MuChoMusic / MMAU data)
        out[group] = {
            value: cell([flag(x) for x in xs], [x.n_choices for x in xs])
            for value, xs in sorted(members.items())
        }
    return out


def _counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def compute_metrics(items: list[ScoredItem], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """The metrics.json body for a list of scored items (see the module doc)."""
    if not items:
        raise ValueError("no items to score")
    parsed = sum(x.parsed for x in items)
    metrics: dict = {
        "n_items": len(items),
        "no_prediction": sum(not x.has_prediction for x in items),
        "no_prediction_ids": sorted(x.id for x in items if not x.has_prediction),
        "instruction_following": {
            "parsed": parsed,
            "total": len(items),
            "rate": round(100.0 * parsed / len(items), 4),
        },
        "extraction_methods": _method_counts(x.method for x in items),
        "random_baseline": round(100 * stats.random_expectation([x.n_choices for x in items]), 4),
    }
    for name in available_metrics(items):
        metrics[name] = _table(items, METRICS[name].flag, n_boot, seed)
    return metrics


def _method_counts(methods: Iterable[str]) -> dict[str, int]:
    """Answers per extraction method, every method listed (0 included), in the order tried."""
    counts = _counts(methods)
    ordered = {m: counts.pop(m, 0) for m in METHODS}
    return {**ordered, **counts}


def summary_lines(metrics: dict) -> list[str]:
    """A few human-readable lines for the terminal."""
    lines = []
    for key in METRICS:
        if key not in metrics:
            continue
        o = metrics[key]["overall"]
        lines.append(
            f"{key}: {o['accuracy']:.2f}% ({o['correct']}/{o['total']}), 95% CI "
            f"[{o['ci95'][0]:.1f}, {o['ci95'][1]:.1f}], random {o['random_accuracy']:.2f}%, "
            f"p vs random {o['p_vs_random']:.3g}"
        )
        for layer, c in metrics[key].get("category", {}).items():
            lines.append(f"  {layer}: {c['accuracy']:.2f}% ({c['correct']}/{c['total']})")
    methods = ", ".join(f"{m} {n}" for m, n in metrics.get("extraction_methods", {}).items())
    lines.append(f"answers per extraction method: {methods}")
    ifr = metrics["instruction_following"]
    lines.append(f"instruction following: {ifr['rate']:.2f}% ({ifr['parsed']}/{ifr['total']} parsable)")
    lines.append(f"no prediction: {metrics['no_prediction']} item(s) (counted as wrong)")
    return lines
