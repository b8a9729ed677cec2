"""Plain-text table of a finetune run's test metrics: model, baselines and chance side by side."""

from __future__ import annotations


def _rows(report: dict) -> list[tuple[str, str, dict | None]]:
    """(metric label, path into a result dict, chance) for the run's task."""
    if report["task"] == "classification":
        chance = report["chance"]
        return [(name, name, chance.get(name)) for name in ("balanced_accuracy", "auroc", "kappa", "weighted_f1")]
    kway = report["model"]["k_way_retrieval"]
    ident = report["model"]["segment_identification"]
    rows = [(f"{kway['k']}-way top-{t}", f"k_way_retrieval.top{t}", kway.get(f"top{t}_chance")) for t in (1, 5) if f"top{t}" in kway]
    rows += [(f"identification top-{t} of {ident['stimuli']}", f"segment_identification.top{t}", ident[f"top{t}_chance"])
             for t in (1, 5, 10) if f"top{t}" in ident]
    rows.append(("stimulus balanced acc.", "stimulus_classification.balanced_accuracy",
                 1 / ident["stimuli"] if ident["stimuli"] else None))
    return rows


def _get(result: dict, path: str):
    for part in path.split("."):
        result = result.get(part, {}) if isinstance(result, dict) else {}
    return result if isinstance(result, float | int) else None


def format_report(report: dict) -> str:
    split = report["split"]
    columns = ["model"] + [b for b in ("shuffled", "random_encoder") if b in report]
    head = (f"{report['task']} · mode {report['mode']} · layer {report['layer']} · {report['windows']} windows; split by "
            f"{split['group_by']}: train {split['train']['windows']} / val {split['val']['windows']} / test "
            f"{split['test']['windows']} windows ({split['test']['groups']} test groups)")
    lines = [head, f"{'metric':<32}" + "".join(f"{c:>16}" for c in columns) + f"{'chance':>10}"]
    for label, path, chance in _rows(report):
        values = [_get(report[c], path) for c in columns]
        lines.append(f"{label:<32}" + "".join(f"{v:>16.3f}" if v is not None else f"{'n/a':>16}" for v in values)
                     + (f"{chance:>10.3f}" if chance is not None else f"{'':>10}"))
    return "\n".join(lines)


__all__ = ["format_report"]
