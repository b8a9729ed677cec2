"""Recordings → webdataset signal shards with a physical description of every sensor.

Public entry points (the CLI calls these; notebooks can too):

- :func:`build_shards` — read, preprocess, window and shard every input of a :class:`ShardsConfig`;
- :class:`ShardStream` / :class:`ShardIndex` — stream or index the shards (resumable);
- :func:`verify_shards`, :func:`summarize` — check and summarise a shard folder;
- :func:`read_recording` — one recording as an MNE object with positioned brain channels.
"""

import importlib

#: Public name → the module that defines it. Imported on first use (PEP 562), so a process that only
#: stages recordings (a Dask worker of ``build_shards``) does not load torch through the dataset module.
_HOMES = {
    "KINDS": "sensors",
    "SENSOR_FEATURES": "sensors",
    "InputSpec": "config",
    "ShardIndex": "dataset",
    "ShardStream": "dataset",
    "ShardsConfig": "config",
    "build_shards": "build",
    "read_recording": "readers",
    "summarize": "verify",
    "verify_shards": "verify",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
