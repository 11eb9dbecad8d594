"""Face data: MXNet RecordIO (pure Python), insightface .bin verification sets, image folders, the
synthetic identity benchmark, distributed-aware batch samplers, dataset fingerprints, the registry of
data sources, the training batch contract (``FaceBatch``) and the Lightning datamodule."""

from ekd.data.batch import FaceBatch, as_face_batch, normalise_batch
from ekd.data.bins import KNOWN_BIN_SETS, load_bin, write_bin
from ekd.data.datasets import FaceFolderDataset, FaceRecordDataset, pack_folder, write_face_records
from ekd.data.errors import BinFormatError, DataError, RecordIOError
from ekd.data.fingerprint import cache_unusable_reason, dataset_fingerprint
from ekd.data.recordio import IRHeader, RecordReader, RecordWriter, pack_payload, reindex, unpack_payload
from ekd.data.samplers import EKDBatchSampler, PKBatchSampler, RandomBatchSampler
from ekd.data.sources import (
    DATA_SOURCES,
    DataSource,
    create_data_source,
    list_data_sources,
    register_data_source,
)
from ekd.data.synthetic import SyntheticConfig, SyntheticSettings, as_synthetic_config, write_synthetic


def __getattr__(name: str):
    # Lazy: the datamodule pulls in pytorch_lightning, which readers, workers and the CLI do not need.
    if name == "FaceDataModule":
        from ekd.data.datamodule import FaceDataModule

        return FaceDataModule
    raise AttributeError(f"module 'ekd.data' has no attribute {name!r}")


__all__ = [
    "DATA_SOURCES",
    "KNOWN_BIN_SETS",
    "BinFormatError",
    "DataError",
    "DataSource",
    "EKDBatchSampler",
    "FaceBatch",
    "FaceDataModule",
    "FaceFolderDataset",
    "FaceRecordDataset",
    "IRHeader",
    "PKBatchSampler",
    "RandomBatchSampler",
    "RecordIOError",
    "RecordReader",
    "RecordWriter",
    "SyntheticConfig",
    "SyntheticSettings",
    "as_face_batch",
    "as_synthetic_config",
    "cache_unusable_reason",
    "create_data_source",
    "dataset_fingerprint",
    "list_data_sources",
    "load_bin",
    "normalise_batch",
    "pack_folder",
    "pack_payload",
    "register_data_source",
    "reindex",
    "unpack_payload",
    "write_bin",
    "write_face_records",
    "write_synthetic",
]
