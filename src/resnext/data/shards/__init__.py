"""WebDataset shards: the format ``resnext pack`` writes and ``data.name=webdataset`` reads.

- :mod:`.index`: the pack format (``index.json`` and its shards), written by
  :mod:`resnext.data.pack` and read here: one definition for both;
- :mod:`.plan`: a pack's splits (:class:`ShardSplit`) and the plan of an epoch, which
  stream reads which shards in which batches;
- :mod:`.stream`: reading the tar files, and the streams of whole batches a loader serves.
"""

from .index import (
    FORMAT,
    INDEX_FILE,
    KEY_DIGITS,
    LABEL_EXT,
    SPLITS,
    VERSION,
    Shard,
    ShardError,
    import_webdataset,
    read_index,
)
from .plan import ShardSplit, StreamPlan, plan_epoch, shard_order, webdataset_splits
from .stream import (
    RawSample,
    ShardStream,
    check_train_streams,
    decode_image,
    read_shard,
    shard_loader,
)

__all__ = [
    "FORMAT",
    "INDEX_FILE",
    "KEY_DIGITS",
    "LABEL_EXT",
    "SPLITS",
    "VERSION",
    "RawSample",
    "Shard",
    "ShardError",
    "ShardSplit",
    "ShardStream",
    "StreamPlan",
    "check_train_streams",
    "decode_image",
    "import_webdataset",
    "plan_epoch",
    "read_index",
    "read_shard",
    "shard_loader",
    "shard_order",
    "webdataset_splits",
]
