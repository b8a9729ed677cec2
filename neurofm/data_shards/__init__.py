"""Recordings → webdataset signal shards with a physical description of every sensor.

Public entry points (the CLI calls these; notebooks can too):

- :func:`build_shards` — read, preprocess, window and shard every input of a :class:`ShardsConfig`;
- :class:`ShardStream` / :class:`ShardIndex` — stream or index the shards (resumable);
- :func:`verify_shards`, :func:`summarize` — check and summarise a shard folder;
- :func:`read_recording` — one recording as an MNE object with positioned brain channels.
"""

from neurofm.data_shards.build import build_shards
from neurofm.data_shards.config import InputSpec, ShardsConfig
from neurofm.data_shards.dataset import ShardIndex, ShardStream
from neurofm.data_shards.readers import read_recording
from neurofm.data_shards.sensors import KINDS, SENSOR_FEATURES
from neurofm.data_shards.verify import summarize, verify_shards

__all__ = [
    "KINDS",
    "SENSOR_FEATURES",
    "InputSpec",
    "ShardIndex",
    "ShardStream",
    "ShardsConfig",
    "build_shards",
    "read_recording",
    "summarize",
    "verify_shards",
]
