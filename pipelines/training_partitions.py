"""Which source partitions a retrain reads: every corrections version but the newest is left out.

A pull of the labelers' review (`pipelines.review.pull`) writes a cumulative snapshot: version N
holds every image reviewed so far, with its labels as they stand now (accepted, corrected, or
none where all were rejected). So the newest `corrections-vNNNN` supersedes the older ones:
training on all of them would show an image once per version that holds it, and a label a
labeler later rejected or moved would keep training from the older versions. Hence a retrain
trains each reviewed image once, with its latest reviewed labels, by taking only the newest
corrections version (older ones stay on disk and in the catalog, for the record and for a
retrain that names one on purpose, alone).
"""

from __future__ import annotations

import re

_CORRECTIONS = re.compile(r"^corrections-v(\d{4,})$")


def corrections_number(partition: str) -> int | None:
    """`corrections-v0003` -> 3; None for any other partition."""
    m = _CORRECTIONS.match(partition)
    return int(m[1]) if m else None


def training_partitions(partitions) -> tuple[list[str], list[str]]:
    """(partitions to train on, corrections versions left out because a newer one supersedes them).

    Every partition that is not a corrections version is kept; of the corrections versions only
    the newest (by number) is. The order of the kept partitions is the order given."""
    partitions = list(dict.fromkeys(partitions))  # a partition named twice trains once
    versions = [p for p in partitions if corrections_number(p) is not None]
    newest = max(versions, key=corrections_number, default=None)
    superseded = sorted((p for p in versions if p != newest), key=corrections_number)
    return [p for p in partitions if p not in superseded], superseded
