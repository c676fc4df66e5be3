"""Which files each source partition reads and where its shards go.

Built-in sources follow `pipelines.layout`; a corrections partition reads the COCO json(s) of
one version folder written by `pipelines.review.pull.pull_corrections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from assets_defs.partitions import CORRECTIONS_PREFIX, is_corrections
from pipelines.layout import ConvertSpec, source_specs


@dataclass(frozen=True)
class PartitionSpec:
    """One conversion of a partition: `convert_source(fmt, input_path, shard_dir, **options)`."""

    partition: str
    split: str
    fmt: str
    input_path: Path
    shard_dir: Path
    options: dict = field(default_factory=dict)

    def files(self) -> list[Path]:
        return ConvertSpec(self.partition, self.split, self.fmt, self.input_path, self.options).files()


def corrections_version_dir(partition: str, corrections_root) -> Path:
    return Path(corrections_root) / partition[len(CORRECTIONS_PREFIX):]


def partition_specs(partition: str, sources_root, shards_root, corrections_root) -> list[PartitionSpec]:
    shards_root = Path(shards_root)
    if not is_corrections(partition):
        return [PartitionSpec(partition, s.split, s.fmt, s.input_path, s.shard_dir(shards_root), dict(s.options))
                for s in source_specs(partition, sources_root)]
    version = corrections_version_dir(partition, corrections_root)
    images = Path(sources_root) / "coco" / "images"  # pulled json names the reviewed images by file name
    specs = []
    for f in sorted(version.glob("*.json")):
        if "keypoints" in f.name:
            fmt, sub = "coco-keypoints", "train-keypoints"
        elif "instances" in f.name:
            fmt, sub = "coco", "train"
        else:
            continue  # rejections / provenance files are not training data
        specs.append(PartitionSpec(partition, "train", fmt, f, shards_root / partition / sub,
                                   {"split": "train", "images_dir": images}))
    return specs


def partition_files(specs: list[PartitionSpec]) -> list[Path]:
    return sorted({f for s in specs for f in s.files()})


def fingerprint(files: list[Path]) -> str:
    """Changes when any file of a partition is added, removed, rewritten or resized."""
    import hashlib

    h = hashlib.sha1()
    for f in sorted(files):
        st = f.stat() if f.exists() else None
        h.update(f"{f}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()[:16]
