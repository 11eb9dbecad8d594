"""Face data: MXNet RecordIO (pure Python), insightface .bin verification sets, image folders, the
synthetic identity benchmark, distributed-aware batch samplers, dataset fingerprints and the Lightning
datamodule."""

from ekd.data.bins import KNOWN_BIN_SETS, load_bin, write_bin
from ekd.data.datasets import FaceFolderDataset, FaceRecordDataset, pack_folder, write_face_records
from ekd.data.errors import BinFormatError, DataError, RecordIOError
from ekd.data.fingerprint import dataset_fingerprint
from ekd.data.recordio import IRHeader, RecordReader, RecordWriter, pack_payload, reindex, unpack_payload
from ekd.data.samplers import EKDBatchSampler, PKBatchSampler, RandomBatchSampler
from ekd.data.synthetic import SyntheticConfig, write_synthetic


def __getattr__(name: str):
    # Lazy: the datamodule pulls in pytorch_lightning, which readers, workers and the CLI do not need.
    if name == "FaceDataModule":
        from ekd.data.datamodule import FaceDataModule

        return FaceDataModule
    raise AttributeError(f"module 'ekd.data' has no attribute {name!r}")


__all__ = [
    "KNOWN_BIN_SETS",
    "BinFormatError",
    "DataError",
    "EKDBatchSampler",
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
    "dataset_fingerprint",
    "load_bin",
    "pack_folder",
    "pack_payload",
    "reindex",
    "unpack_payload",
    "write_bin",
    "write_face_records",
    "write_synthetic",
]
