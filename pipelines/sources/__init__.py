"""Source readers: each turns one on-disk format into sample drafts plus quarantine rows.

A *record* is the unit a source is accounted in: a COCO annotation (`ann:<id>`) or an image no
annotation refers to (`img:<id>`, instances files only), a RefCOCO
sentence (`ref:<ref_id>/sent:<sent_id>`), a VQAv2 question (`q:<id>`), a LLaVA human->gpt turn
(`llava:<id>/turn:<k>`). Every record read ends up in the `source_ids` of at least one sample or
in one quarantine row (each copy of a duplicated id gets its own row); `ReadResult.records_read`
counts them.
"""

from pipelines.sources.common import Draft, ReadResult  # noqa: F401
