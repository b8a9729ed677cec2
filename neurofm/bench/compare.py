"""Side-by-side headline figures of several representation-benchmark runs (``neurofm bench compare``).

Each candidate of the benchmark is a run with its own ``results.json``; this reads several and writes one
markdown table, a row per headline measure and a column per run, from the numbers the runs stored (their
own target checks included), so a candidate's row in ``benchmarks/RESULTS.md`` is the output of a command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from neurofm.bench.report import _f, _mean, headline
from neurofm.errors import NeuroFMError


def load_results(path: str | Path) -> dict:
    """A run's ``results.json`` (the file, or the run's ``out`` folder that holds it)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise NeuroFMError(f"{file}: not a readable benchmark results.json ({err}); give a run's out= folder or its "
                           "results.json.") from err
    missing = [k for k in ("config", "evoked", "targets") if k not in results]
    if missing:
        raise NeuroFMError(f"{file} lacks {', '.join(missing)}: not the results of `neurofm bench representation`.")
    return results


def _slash(values) -> str:
    return " / ".join(_f(v) for v in values)


def _devices(results: dict) -> list[str]:
    return sorted(results["evoked"])


def _layer_means(results: dict, column: str) -> list[float]:
    curves = [r[column]["layers"] for r in results["evoked"].values() if column in r]
    return [float(np.mean(layer)) for layer in zip(*curves)] if curves else []


def _rows(results: dict) -> dict[str, str]:
    """{measure: this run's cell} for one run."""
    cfg = results["config"]
    p = cfg["poolings"][0]
    held = set(cfg.get("held_out_devices", []))
    ev = {c: _mean(headline(results, "evoked", c).values()) for c in (f"release/{p}", f"random/{p}", f"tokenizer/{p}", "raw")}
    rows = {
        f"evoked, `{p}`: release / random / tokenizer / raw": _slash(ev.values()),
        "… release per device (* held out)": " / ".join(
            f"{d}{'*' if d in held else ''} {_f(results['evoked'][d][f'release/{p}']['score'])}" for d in _devices(results)),
        "… margin over random weights (target 0.10)": _f(ev[f"release/{p}"] - ev[f"random/{p}"]),
        "… release per layer (mean over devices)": _slash(_layer_means(results, f"release/{p}")),
    }
    if "flat" in cfg["poolings"] and p != "flat":
        rows["evoked, `flat`: release / random"] = _slash(_mean(headline(results, "evoked", f"{c}/flat").values()) for c in ("release", "random"))
    few = results.get("few_labels") or {}
    if few and all("10" in f for f in few.values()):
        rows["10 labels per class: release / raw"] = _slash(_mean(f["10"][c]["mean"] for f in few.values()) for c in (f"release/{p}", "raw"))
    if results.get("cross_device"):
        rows["cross-device, release: " + " / ".join(f"{c['train']} → {c['test']}" for c in results["cross_device"])] = \
            _slash(c[f"release/{p}"]["score"] for c in results["cross_device"])
    rp = cfg.get("regression_pooling") or next(q for q in cfg["poolings"] if q != "event")
    if results.get("regression"):
        rows[f"{cfg.get('regression_key', 'regression')} R², `{rp}`: release / random / tokenizer / raw"] = _slash(
            _mean(headline(results, "regression", c).values()) for c in (f"release/{rp}", f"random/{rp}", f"tokenizer/{rp}", "raw"))
    tok = results.get("tokenizer") or {}
    if tok:
        rows["tokenizer PCC vs PCA: " + " / ".join(tok)] = " / ".join(
            f"{_f(t['tokenizer']['pcc'])} ({_f(t['pca']['pcc']) if t.get('pca') else '—'})" for t in tok.values())
    mc = results.get("masked_codes")
    if mc:
        rows["masked-code accuracy per level (level 1 × better trivial)"] = \
            f"{_slash(mc['model'])} ({mc['ratio_to_best_trivial'][0]:.2f}×)"
    real = results.get("real_tasks") or {}
    if real:
        pooling_of = {t["name"]: t.get("pooling") or p for t in cfg.get("real_tasks", [])}
        cells = [(r[f"release/{pooling_of.get(n, p)}"]["score"], r[f"random/{pooling_of.get(n, p)}"]["score"]) for n, r in real.items()]
        rows["real tasks, release / random: " + "; ".join(real)] = \
            "; ".join(_slash(c) for c in cells) + f" ({sum(a > b for a, b in cells)} of {len(cells)})"
    rows["targets met"] = f"{sum(t['met'] for t in results['targets'])} of {len(results['targets'])}"
    timings = results.get("timings") or {}
    if timings:
        rows["stage times, s: " + " / ".join(k.removesuffix("_s") for k in timings)] = " / ".join(f"{v:.0f}" for v in timings.values())
    return rows


def compare_markdown(runs: list[dict], names: list[str]) -> str:
    """A markdown table: a row per measure (those of the first run first), a column per run."""
    if len(names) != len(runs):
        raise NeuroFMError(f"{len(names)} names for {len(runs)} runs; give one name per run (or none).")
    per_run = [_rows(r) for r in runs]
    measures = list(dict.fromkeys(m for rows in per_run for m in rows))
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {m} | " + " | ".join(rows.get(m, "—") for rows in per_run) + " |" for m in measures]
    return "\n".join(lines) + "\n"


__all__ = ["compare_markdown", "load_results"]
