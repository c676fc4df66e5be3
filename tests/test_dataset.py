import numpy as np
import pytest
import torch

from pipelines.dataset import ShardDataset, collate_samples, load_hf_dataset
from pipelines.geometry import SquarePad
from pipelines.shards import read_table


def test_torch_dataset_yields_model_ready_tensors(sample_shards_dir):
    ds = ShardDataset([sample_shards_dir / "coco-keypoints-train", sample_shards_dir / "refcoco-train",
                       sample_shards_dir / "vqav2-train"])
    tasks = {}
    for i in range(len(ds)):
        tasks.setdefault(ds.rows[i]["task"], i)
    pose, seg, vqa = ds[tasks["pose"]], ds[tasks["referring_segmentation"]], ds[tasks["vqa"]]
    assert pose["pixel_values"].shape == (3, 128, 128) and pose["pixel_values"].dtype == torch.float32
    assert 0 <= pose["pixel_values"].min() and pose["pixel_values"].max() <= 1
    assert pose["heatmap"].shape == (32, 32) and pose["heatmap"].dtype == torch.float32
    for c in pose["centers"]:
        assert pose["heatmap"][c[1], c[0]] == 1.0
    n = len(pose["centers"])
    assert pose["keypoints_input"].shape == (n, 17, 3) and pose["sizes"].shape == (n, 2)
    assert pose["boxes_input"].shape == (n, 4) and pose["centers"].dtype == torch.int64
    # keypoints are in input pixels: through the same square-pad transform as the image
    row = ds.rows[tasks["pose"]]
    geo = SquarePad(row["image_width"], row["image_height"], 128, 32)
    kp = np.asarray(row["keypoints"][0], np.float64).reshape(17, 3)
    assert np.allclose(pose["keypoints_input"][0, :, :2].numpy(), geo.to_input(kp[:, :2]), atol=1e-3)
    assert seg["masks_input"].shape == (1, 128, 128) and seg["masks_input"].dtype == torch.uint8
    assert seg["masks_input"].sum() > 0
    # the mask's padded pixels sit inside the padded box
    x0, y0, x1, y1 = seg["boxes_input"][0].tolist()
    ys, xs = np.nonzero(seg["masks_input"][0].numpy())
    assert xs.min() >= x0 - 2 and xs.max() <= x1 + 2 and ys.min() >= y0 - 2 and ys.max() <= y1 + 2
    assert vqa["has_heatmap"] is False and vqa["heatmap"].sum() == 0 and vqa["masks_input"].shape[0] == 0
    assert isinstance(vqa["answer"], str) and vqa["task"] == "vqa"
    batch = collate_samples([pose, seg, vqa])
    assert batch["pixel_values"].shape == (3, 3, 128, 128) and batch["has_heatmap"].tolist() == [True, True, False]
    assert batch["heatmap"].shape == (3, 32, 32) and isinstance(batch["centers"], list) and len(batch["centers"]) == 3


def test_pixels_are_the_padded_image(sample_shards_dir):
    ds = ShardDataset([sample_shards_dir / "coco-val"], tasks=["detection"])
    item = ds[0]
    row = ds.rows[0]
    geo = SquarePad(row["image_width"], row["image_height"], 128, 32)
    x0, y0, x1, y1 = geo.content_box_input()
    px = item["pixel_values"]
    outside = torch.cat([px[:, :y0].flatten(), px[:, y1:].flatten(), px[:, :, :x0].flatten(), px[:, :, x1:].flatten()])
    assert outside.numel() == 0 or outside.max() == 0  # padding is black
    assert px[:, y0:y1, x0:x1].mean() > 0.05  # the picture is there


@pytest.mark.parametrize("width,height", [(130, 186), (181, 97), (177, 129), (64, 64)])
def test_what_the_model_draws_on_the_input_goes_back_to_where_pad_image_put_the_image(width, height):
    """A bright column and row of the original image, padded, land on input pixels that `content_to_image` maps back
    onto that column and row (within a tenth of an original pixel; `from_input`, the exact inverse of the box
    targets' `to_input`, is up to 0.7 pixels off on the padded axis of these sizes: the content box is rounded)."""
    from pipelines.geometry import pad_image

    u, v = width // 3, height // 2
    column, row = np.zeros((height, width, 3), np.uint8), np.zeros((height, width, 3), np.uint8)
    column[:, u - 1:u + 2], row[v - 1:v + 2] = 255, 255
    geo = SquarePad(width, height, 128, 32)
    centres = (np.arange(128) + 0.5)
    cx = centres @ pad_image(column, 128)[..., 0].sum(0) / pad_image(column, 128)[..., 0].sum()  # brightness-weighted
    cy = centres @ pad_image(row, 128)[..., 0].sum(1) / pad_image(row, 128)[..., 0].sum()
    (x, y), = geo.content_to_image(np.array([[cx, cy]]))
    assert abs(x - (u + 0.5)) < 0.1 and abs(y - (v + 0.5)) < 0.1
    x0, y0, x1, y1 = geo.content_box_input()
    assert geo.content_to_image(np.array([[x0, y0], [x1, y1]])).tolist() == [[0, 0], [width, height]]


def test_dataset_filters_and_rerenders_for_another_input_size(sample_shards_dir):
    ds = ShardDataset([sample_shards_dir / "coco-val"], input_size=256, tasks=["detection"], split="val")
    assert len(ds) and {r["task"] for r in ds.rows} == {"detection"}
    item = next(ds[i] for i in range(len(ds)) if len(ds.rows[i]["boxes"]))
    assert item["pixel_values"].shape == (3, 256, 256) and item["heatmap"].shape == (64, 64)
    for cx, cy in item["centers"].tolist():
        assert item["heatmap"][cy, cx] == 1.0
    assert len(ShardDataset([sample_shards_dir / "coco-val"], split="train")) == 0


def test_shards_load_with_hf_datasets(sample_shards_dir):
    ds = load_hf_dataset([str(sample_shards_dir / "refcoco-val")])
    assert len(ds) == read_table(sample_shards_dir / "refcoco-val").num_rows
    assert set(ds.column_names) >= {"instruction", "answer", "heatmap", "boxes", "task", "source_ids"}
    assert ds[0]["heatmap"][:4] == b"\x89PNG"
