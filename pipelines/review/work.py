"""The review work waiting for a pull, read fresh from the database, with a key that names it.

A long-running process (the Dagster code server, where the corrections sensor ticks) keeps the
FiftyOne `Dataset` object it loaded first: its info and schema are what they were then. A pull
made meanwhile from the command line (`lumen review pull`, another process) marks every reviewed
label as pulled, but that object still counts them as new. So each look reloads the dataset.

The key is a hash of the unpulled review states (label id and review signature), so it changes
with every new review and stays the same until something is reviewed or pulled: a sensor that
keys its pull requests on it asks once per state, not once per corrections version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipelines.review import fields as F
from pipelines.review.fo_env import fiftyone
from pipelines.review.queue import review_work_count
from pipelines.review.reviewed import scan


@dataclass(frozen=True)
class ReviewWork:
    reviewed: int  # labels reviewed (or withdrawn) since the last pull
    key: str  # names this state of the review: same state, same key
    last_pull: str  # version folder of the last pull, whoever made it ("" before any)


def review_work(dataset_name: str) -> ReviewWork:
    """Reviewed labels the last pull has not seen, as the database holds them now."""
    fo = fiftyone()
    if not fo.dataset_exists(dataset_name):
        return ReviewWork(0, "no-dataset", "")
    dataset = fo.load_dataset(dataset_name)
    dataset.reload()  # this process may hold the object from an earlier look: what it cached is stale
    states = scan(dataset)  # one scan for the count and the key
    reviewed = review_work_count(dataset, states, states)
    unpulled = sorted(f"{s.label_id}:{s.signature}" for s in states if s.signature != s.pulled)
    last_pull = F.review_info(dataset).get("last_pull", {})
    digest = hashlib.sha1("\n".join([last_pull.get("content_hash", ""), *unpulled]).encode()).hexdigest()[:12]
    return ReviewWork(reviewed, digest, last_pull.get("version_dir", ""))
