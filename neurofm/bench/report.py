"""The representation benchmark's table (markdown), target checks and per-layer figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurofm.bench.config import RepresentationBenchConfig

EMBEDDINGS = ("release", "random", "tokenizer")
NAMES = {"release": "release", "random": "random weights", "tokenizer": "tokenizer alone", "raw": "raw features",
         "oracle": "oracle (true sources)"}


def _f(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def headline(results: dict, task: str, column: str, last: bool = False) -> dict[str, float]:
    """{device: score} of ``column`` (e.g. ``release/time`` or ``raw``) in a within-device task."""
    out = {}
    for device, r in results[task].items():
        entry = r[column]
        out[device] = entry["layers"][-1] if last else entry["score"]
    return out


def targets(results: dict, cfg: RepresentationBenchConfig) -> list[dict]:
    """The issue's targets for the headline pooling, each with its measured value and met / missed."""
    p = cfg.poolings[0]
    held = set(cfg.held_out_devices)
    release, random, raw = (headline(results, "evoked", c) for c in (f"release/{p}", f"random/{p}", "raw"))
    rows = [
        {"target": "evoked: release ≥ raw features − 0.05 (mean over devices)", "value": _mean(release.values()),
         "threshold": _mean(raw.values()) - 0.05},
        {"target": "evoked: release ≥ random weights + 0.10 (mean over devices)", "value": _mean(release.values()),
         "threshold": _mean(random.values()) + 0.10},
        {"target": "evoked on held-out devices: release ≥ raw − 0.05", "value": _mean(v for d, v in release.items() if d in held),
         "threshold": _mean(v for d, v in raw.items() if d in held) - 0.05},
    ]
    for across, what in ((False, "within a modality: montage → montage, helmet → helmet"), (True, "EEG → MEG, the issue's stretch")):
        transfer = [c[f"release/{p}"]["score"] for c in results["cross_device"] if (c["modalities"][0] != c["modalities"][1]) == across]
        if transfer:
            rows.append({"target": f"cross-device transfer ≥ 0.75 ({what}; mean over {len(transfer)} pair{'s' if len(transfer) > 1 else ''})",
                         "value": _mean(transfer), "threshold": 0.75})
    if 10 in cfg.few_labels:
        few = results["few_labels"]  # {device: {"10": ...}}: keyed as in results.json
        rows.append({"target": "10 labels per class: release ≥ raw features (mean over devices)",
                     "value": _mean(few[d]["10"][f"release/{p}"]["mean"] for d in few),
                     "threshold": _mean(few[d]["10"]["raw"]["mean"] for d in few)})
    rp = cfg.regression_pooling or cfg.regression_poolings[0]
    rows.append({"target": f"{cfg.regression_key}: release R² ≥ 0.8 (mean over devices, {rp} pooling)",
                 "value": _mean(headline(results, "regression", f"release/{rp}").values()), "threshold": 0.8})
    for modality, t in results["tokenizer"].items():
        if t["pca"]:
            rows.append({"target": f"tokenizer PCC ≥ same-bitrate PCA ({modality}, held-out {_held_out_what(results, modality)})",
                         "value": t["tokenizer"]["pcc"], "threshold": t["pca"]["pcc"]})
    mc = results["masked_codes"]
    rows.append({"target": "masked-code accuracy, level 1 ≥ 1.5 × the better trivial predictor", "value": mc["model"][0],
                 "threshold": 1.5 * max(mc["unigram"][0], mc["copy_nearest"][0])})
    real = results.get("real_tasks") or {}
    if real:
        pooling_of = {t.name: t.pooling or p for t in cfg.real_tasks}
        wins = sum(r[f"release/{pooling_of.get(name, p)}"]["score"] > r[f"random/{pooling_of.get(name, p)}"]["score"]
                   for name, r in real.items())
        declared = sorted({f"{name}: {q}" for name, q in pooling_of.items() if name in real and q != p})
        rows.append({"target": f"real tasks: release > random weights on at least 3 of the 4 ({p} pooling"
                               f"{'; ' + ', '.join(declared) if declared else ''})", "value": float(wins),
                     "threshold": float(min(3, len(real)))})
    for row in rows:
        row["met"] = bool(np.isfinite(row["value"]) and row["value"] >= row["threshold"])
    return rows


def _held_out_what(results: dict, modality: str) -> str:
    """'subjects and devices' where the windows the tokenizer was scored on include a device of this
    modality that no pretraining window came from, else 'subjects'."""
    corpus = set(results["split"]["corpus"]["devices"])
    devices = results["tokenizer"].get(modality, {}).get("devices", [])
    return "subjects and devices" if set(devices) - corpus else "subjects"


def _baselines(task: dict) -> list[str]:
    """The columns beside the embeddings: raw features, and the oracle where every device has one."""
    return ["raw"] + (["oracle"] if task and all("oracle" in r for r in task.values()) else [])


def _within_table(results: dict, task: str, cfg: RepresentationBenchConfig, metric: str) -> list[str]:
    lines = []
    first = next(iter(results[task].values()), {})
    baselines = _baselines(results[task])
    for pooling in [p for p in cfg.poolings if f"release/{p}" in first]:  # the regression has no event pooling
        cols = [f"release/{pooling}", f"random/{pooling}", f"tokenizer/{pooling}"]
        lines += [f"\n{metric}, {pooling} pooling (grouped CV over recordings, within device):\n",
                  "| device | held out | windows | release (inner-CV layer) | release (last layer) | random weights | tokenizer alone | "
                  + " | ".join(NAMES[b] for b in baselines) + " |",
                  "|---|---|---|---|---|---|---|" + "---|" * len(baselines)]
        for device, r in results[task].items():
            held = "yes" if device in cfg.held_out_devices else ""
            lines.append(f"| {device} | {held} | {r['windows']} | {_f(r[cols[0]]['score'])} | {_f(r[cols[0]]['layers'][-1])} | "
                         f"{_f(r[cols[1]]['score'])} | {_f(r[cols[2]]['score'])} | " + " | ".join(_f(r[b]["score"]) for b in baselines) + " |")
        lines.append(f"| **mean** | | | {_f(_mean(headline(results, task, cols[0]).values()))} | "
                     f"{_f(_mean(headline(results, task, cols[0], last=True).values()))} | {_f(_mean(headline(results, task, cols[1]).values()))} | "
                     f"{_f(_mean(headline(results, task, cols[2]).values()))} | "
                     + " | ".join(_f(_mean(headline(results, task, b).values())) for b in baselines) + " |")
    return lines


def _real_table(results: dict, cfg: RepresentationBenchConfig) -> list[str]:
    real = results.get("real_tasks") or {}
    if not real:
        return ["\nReal tasks: not run (no real recordings under real_root).\n"]
    lines = []
    for p in cfg.poolings:
        cols = [f"release/{p}", f"random/{p}", f"tokenizer/{p}"]
        lines += [f"\nReal tasks ({p} pooling; balanced accuracy, grouped CV over runs or blocks of consecutive windows; "
                  "recordings kept out of the pretraining corpus):\n",
                  "| task | windows | groups | release (inner-CV layer) | release (last layer) | random weights | tokenizer alone | raw features | chance |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in real.items():
            lines.append(f"| {name} | {r['windows']} | {r['groups']} | {_f(r[cols[0]]['score'])} | {_f(r[cols[0]]['layers'][-1])} | "
                         f"{_f(r[cols[1]]['score'])} | {_f(r[cols[2]]['score'])} | {_f(r['raw']['score'])} | {_f(r['chance'])} |")
    return lines


def _recordings(task: dict) -> str:
    counts = sorted({r["recordings"] for r in task.values()}) or [0]
    return f"{counts[0]}–{counts[-1]}" if len(counts) > 1 else str(counts[0])


def markdown(results: dict, cfg: RepresentationBenchConfig) -> str:
    split = results["split"]
    lines = ["# Representation benchmark", "",
             f"Probe set: {results['windows']} event-locked windows of held-out subjects on {', '.join(results['devices'])}; "
             f"held-out devices (no pretraining window): {', '.join(cfg.held_out_devices)}. Pretraining corpus devices: "
             f"{', '.join(split['corpus']['devices'])}{' + the real recordings in ' + results['real_data'] if results['real_data'] else ''}.",
             f"Chance: evoked {1 / len(cfg.evoked_labels):.3f} balanced accuracy; R² 0.",
             f"Stage times (s): {results['timings']}."]
    lines += _within_table(results, "evoked", cfg, f"Evoked condition ({len(cfg.evoked_labels)}-way), balanced accuracy")
    where = (f"continuous windows of {', '.join(cfg.regression_modalities)} recordings of other held-out subjects (the continuous set; "
             f"{_recordings(results['regression'])} recordings per device)" if cfg.continuous_set is not None else "the probe set")
    lines += _within_table(results, "regression", cfg, f"{cfg.regression_key} (ridge) on {where}, R²")
    oracle = ["oracle"] if results["cross_device"] and all("oracle" in c for c in results["cross_device"]) else []
    lines += ["\nCross-device transfer (probe fit on one device, tested on another; raw features cannot transfer, the oracle's "
              "source channels can), balanced accuracy:\n",
              "| train → test | " + " | ".join([f"{NAMES[c]} ({p})" for p in cfg.poolings for c in EMBEDDINGS] + [NAMES[o] for o in oracle]) + " |",
              "|---|" + "---|" * (len(cfg.poolings) * len(EMBEDDINGS) + len(oracle))]
    for c in results["cross_device"]:
        lines.append(f"| {c['train']} → {c['test']} | "
                     + " | ".join([_f(c[f"{e}/{p}"]["score"]) for p in cfg.poolings for e in EMBEDDINGS] + [_f(c[o]["score"]) for o in oracle]) + " |")
    p = cfg.poolings[0]
    lines += [f"\nFew labels ({p} pooling; balanced accuracy, mean ± SD over {cfg.few_label_repeats} draws; train on half of the "
              "recordings, test on the other half):\n",
              "| device | labels per class | release | random weights | tokenizer alone | "
              + " | ".join(NAMES[b] for b in _baselines(results["evoked"])) + " |",
              "|---|---|---|---|---|" + "---|" * len(_baselines(results["evoked"]))]
    for device, by_n in results["few_labels"].items():
        for n, r in by_n.items():
            cells = [f"{r[c]['mean']:.3f} ± {r[c]['sd']:.3f}" if c in r else "—"
                     for c in (f"release/{p}", f"random/{p}", f"tokenizer/{p}", *_baselines(results["evoked"]))]
            lines.append(f"| {device} | {n} | " + " | ".join(cells) + " |")
    scored = "the continuous set" if cfg.continuous_set is not None else "the probe set"
    lines += [f"\nTokenizer on windows of held-out subjects ({scored}; up to 400 per modality) vs the same-bitrate PCA codec:\n",
              "| modality | devices (* no pretraining window) | windows | bit/s | tokenizer PCC | PCA PCC | tokenizer R² | PCA R² | "
              "tokenizer log-spectrum error (decades) |",
              "|---|---|---|---|---|---|---|---|---|"]
    corpus_devices = set(results["split"]["corpus"]["devices"])
    for modality, t in results["tokenizer"].items():
        pca = t["pca"] or {}
        devices = ", ".join(d + ("*" if d not in corpus_devices else "") for d in t.get("devices", [])) or "—"
        lines.append(f"| {modality} | {devices} | {t['tokenizer']['windows']} | {t['bits_per_second']:.0f} | {_f(t['tokenizer']['pcc'])} | "
                     f"{_f(pca.get('pcc'))} | {_f(t['tokenizer']['r2'])} | {_f(pca.get('r2'))} | {_f(t['tokenizer']['spectral_error'])} |")
    mc = results["masked_codes"]
    lines += [f"\nMasked-code accuracy on the probe set's codes ({mc['masking']['strategy']} masking, ratio {mc['masking']['ratio']}):\n",
              "| RVQ level | model | unigram | copy nearest visible | model / better trivial |", "|---|---|---|---|---|"]
    for level, values in enumerate(zip(mc["model"], mc["unigram"], mc["copy_nearest"], mc["ratio_to_best_trivial"])):
        lines.append(f"| {level + 1} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    lines += _real_table(results, cfg)
    lines += ["\nTargets:\n", "| target | measured | needed | |", "|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {_f(t['value'])} | {_f(t['threshold'])} | {'met' if t['met'] else '**missed**'} |")
    return "\n".join(lines) + "\n"


def figure(results: dict, cfg: RepresentationBenchConfig, path: Path) -> None:
    """Per-layer evoked accuracy of the release and random weights per device, baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = cfg.poolings[0]
    devices = list(results["evoked"])
    fig, axes = plt.subplots(1, len(devices), figsize=(3.2 * len(devices), 3), squeeze=False, sharey=True)
    for ax, device in zip(axes[0], devices):
        r = results["evoked"][device]
        layers = np.arange(len(r[f"release/{p}"]["layers"]))
        ax.plot(layers, r[f"release/{p}"]["layers"], "o-", label="release")
        ax.plot(layers, r[f"random/{p}"]["layers"], "^-", color="tab:orange", label="random weights")
        ax.axhline(r[f"tokenizer/{p}"]["score"], color="tab:purple", ls="-.", label="tokenizer alone")
        ax.axhline(r["raw"]["score"], color="tab:green", ls=":", label="raw features")
        if "oracle" in r:
            ax.axhline(r["oracle"]["score"], color="tab:gray", ls="--", label="oracle (true sources)")
        ax.axhline(1 / len(cfg.evoked_labels), color="black", lw=0.8, label="chance")
        ax.set_title(device + (" (held out)" if device in cfg.held_out_devices else ""), fontsize=8)
        ax.set_xlabel("layer")
    axes[0, 0].set_ylabel("evoked condition, balanced accuracy")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["figure", "headline", "markdown", "targets"]
