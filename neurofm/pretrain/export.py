"""Release directories: ``neurofm export`` and ``from_pretrained``.

A release is what users download: ``config.json`` (the model config, the tokenizer's identity, the
training summary), ``model.safetensors`` (fp32 weights, gathered from any ZeRO stage by DeepSpeed's
``zero_to_fp32``), ``tokenizer/`` (the tokenizer checkpoint the codes came from) and ``README.md``, a
model card. ``from_pretrained`` reads it without unpickling anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

import neurofm
from neurofm.config import from_dict
from neurofm.errors import NeuroFMError
from neurofm.files import load_state, load_tensors, read_json
from neurofm.pretrain.config import PretrainModelConfig
from neurofm.pretrain.model import MaskedCodeModel
from neurofm.pretrain.safe_checkpoint import weights_only_loads
from neurofm.outputs import check_output, replaced_folder
from neurofm.training.checkpoint import latest_tag

FORMAT = "neurofm-release"
VERSION = 1


def export_release(run: str | Path, out: str | Path, tag: str | None = None, overwrite: bool = False) -> Path:
    """Turn the checkpoint ``tag`` (default: the latest) of a pretraining run into a release at ``out``.

    An existing ``out`` is replaced only with ``overwrite``; an ``out`` that is or holds ``run`` never.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run = Path(run)
    out = check_output(out, {"--run": run}, overwrite=overwrite)
    tag = tag or latest_tag(run)
    config_file = next((run / tag / name for name in ("config.json", "neurofm_config.json")  # the second: older runs
                        if tag and (run / tag / name).is_file()), None)
    if config_file is None:
        raise NeuroFMError(f"{run} holds no complete pretraining checkpoint (no 'latest' tag); train first.")
    saved = read_json(config_file, f"the checkpoint {run / tag} is damaged; export another tag or retrain.")
    tokenizer = Path(saved["tokenizer_path"])
    if not (tokenizer / "model.safetensors").is_file():
        raise NeuroFMError(f"The tokenizer this run's codes came from is gone ({tokenizer}, named in {config_file}); "
                           "a release must carry it. Put the tokenizer back there and export again.")
    with weights_only_loads(run / tag):
        if saved["training"].get("zero_stage", 1) == 0:  # no ZeRO shards: the module's weights are in the model states
            import torch

            module = torch.load(run / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
            state = {k: v.float() for k, v in module.items()}
        else:
            state = get_fp32_state_dict_from_zero_checkpoint(str(run), tag=tag)
    state = {k.removeprefix("_orig_mod."): v.contiguous() for k, v in state.items()}
    with replaced_folder(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "tokenizer").mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(tokenizer / name, tmp / "tokenizer" / name)
        log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()] if (run / "train_log.jsonl").is_file() else []
        codes_manifest = json.loads((Path(saved["codes"]) / "manifest.json").read_text()) if (Path(saved["codes"]) / "manifest.json").is_file() else {}
        config = {
            "format": FORMAT, "version": VERSION, "neurofm_version": neurofm.__version__, "model": saved["model"],
            "tokenizer_sha256": saved["tokenizer_sha256"], "checkpoint": f"{run}/{tag}",
            "training": {"steps": int(tag.split("_")[-1]), "final": log[-1] if log else None, "config": saved["training"]},
            "data": codes_manifest.get("statistics", {}),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "README.md").write_text(_model_card(config))
    return out


def _model_card(config: dict) -> str:
    m, final = config["model"], config["training"]["final"] or {}
    rows = "\n".join(
        f"| {mod} | {s.get('recordings')} | {s.get('windows')} | {s.get('hours', 0):.3f} |" for mod, s in sorted(config["data"].items())
    )
    accuracy = ", ".join(f"{a:.3f}" for a in final.get("masked_accuracy", []))
    families = m.get("channel_tokens") or []
    channel_note = f" (one per channel for the {', '.join(families)} family)" if families else ""
    return f"""# NeuroFM masked-code model

A transformer pretrained by predicting masked codes of the NeuroFM sensor-aware tokenizer (bundled in
`tokenizer/`). Made with NeuroFM {config['neurofm_version']} from `{config['checkpoint']}`.

## Model
- width {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads (~{12 * m['d_model'] ** 2 * m['n_layers'] / 1e6:.1f} M encoder parameters)
- tokens: {m['n_latents']} latents per time patch{channel_note}, {m['levels']} RVQ levels of {m['codes_per_level']} codes
- masking: {m['masking']}, ratio {m['mask_ratio']}; asymmetric decoder: {m['asymmetric']}

## Training data (code shards)
| modality | recordings | windows | hours |
|---|---|---|---|
{rows}

## Training
{config['training']['steps']} steps. Final masked cross-entropy {final.get('loss', float('nan')):.4f}; masked
accuracy per level: {accuracy or 'n/a'}.

## Use
```python
from neurofm.pretrain.export import from_pretrained
model = from_pretrained("path/to/this/folder")   # no network, no unpickling
```

## Limits
Trained on the data above only; read the NeuroFM README's known limits before drawing conclusions.
"""


def from_pretrained(release: str | Path) -> MaskedCodeModel:
    """The model of a release directory, in eval mode."""
    release = Path(release)
    path = release / "config.json"
    if not path.is_file() or not (release / "model.safetensors").is_file():
        raise NeuroFMError(f"{release} is not a NeuroFM release (needs config.json and model.safetensors); make one with `neurofm export`.")
    fix = "export the release again with `neurofm export`, or download it again."
    config = read_json(path, fix)
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise NeuroFMError(f"{release} is a {config.get('format')} v{config.get('version')} directory; this NeuroFM reads {FORMAT} v{VERSION}.")
    if not isinstance(config.get("model"), dict):
        raise NeuroFMError(f"{path} has no 'model' settings; {fix}")
    model = MaskedCodeModel(from_dict(PretrainModelConfig, config["model"], prefix=f"{path}: model"))
    load_state(model, load_tensors(release / "model.safetensors", fix), release / "model.safetensors", fix)
    return model.eval()


__all__ = ["export_release", "from_pretrained"]
