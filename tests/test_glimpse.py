"""The glimpse (lumen_model/glimpse.py): a second look at the object at a heatmap's peak, which reads a question's
answer, names and describes objects, and picks among a referring expression's peaks."""

import torch


def test_glimpse_centre_is_the_peak_plus_its_offset():
    from lumen_model.glimpse import peak_candidates

    heat = torch.full((1, 32, 32), -4.0)
    heat[0, 20, 10] = 3.0  # row 20, column 10
    offsets = torch.zeros(1, 2, 32, 32)
    offsets[0, :, 20, 10] = torch.tensor([0.25, 0.75])
    assert torch.allclose(peak_candidates(heat, offsets, input_size=128, k=1)[0][0, 0], torch.tensor([41.0, 83.0]))


def _draw_circle_and_square(rng, s: int, smallest: int):
    """A circle and a square of random colours and sizes, one in each half -> (image, [circle centre, square
    centre], their radii)."""
    import cv2
    import numpy as np

    img = np.full((s, s, 3), 240, np.uint8)
    r = rng.integers(smallest, 14, 2)
    centres = [(int(rng.integers(16, 48)), int(rng.integers(16, 112))), (int(rng.integers(80, 112)), int(rng.integers(16, 112)))]
    if rng.random() < 0.5:
        centres.reverse()
    colours = [tuple(int(c) for c in rng.integers(0, 200, 3)) for _ in range(2)]
    cv2.circle(img, centres[0], int(r[0]), colours[0], -1)
    (x, y), h = centres[1], int(r[1])
    cv2.rectangle(img, (x - h, y - h), (x + h, y + h), colours[1], -1)
    return img, centres, r.tolist()


def _circle_and_square(rng, s=128, m=32):
    """An image with one circle and one square of random colours and sizes, and the heatmap and offset
    maps of a question about one of them (label 0: the peak is on the circle, 1: on the square)."""
    img, centres, _ = _draw_circle_and_square(rng, s, smallest=6)
    label = int(rng.integers(2))
    cx, cy = centres[label]
    heat = torch.full((m, m), -4.0)
    heat[cy // 4, cx // 4] = 0.5  # a weak peak, as a question's heatmap has
    offsets = torch.full((2, m, m), 0.5)
    pixels = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1
    return heat, offsets, pixels, label


def _glimpse_accuracy(examples: list[tuple], classes: int) -> float:
    """Train a glimpse and a linear answer on its every-position vector with the first 256 of 320 examples
    (heatmap, offsets, pixels, label): accuracy on the last 64."""
    from lumen_model.glimpse import ObjectGlimpse

    torch.manual_seed(0)
    heat, offsets, pixels, labels = (torch.stack([torch.as_tensor(v) for v in col]) for col in zip(*examples))
    question = torch.zeros(len(labels), 16)
    glimpse, answer = ObjectGlimpse(input_size=128, text_dim=16), torch.nn.Linear(16, classes)
    torch.nn.init.normal_(glimpse.answer[-1].weight, std=0.1)  # a zero last layer passes no gradient to the rest
    opt = torch.optim.Adam([*glimpse.parameters(), *answer.parameters()], lr=2e-3)
    for step in range(150):
        i = torch.randint(0, 256, (32,))
        loss = torch.nn.functional.cross_entropy(answer(glimpse(heat[i], offsets[i], pixels[i], question[i])[0]), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        guess = answer(glimpse(heat[256:], offsets[256:], pixels[256:], question[256:])[0]).argmax(1)
    return (guess == labels[256:]).float().mean().item()


def test_glimpse_reads_the_shape_under_the_peak():
    """Every image holds a circle and a square, so only a look at the object under the peak tells which one
    the question is about: the glimpse (and a linear answer on it) learns that from 256 examples."""
    import numpy as np

    rng = np.random.default_rng(0)
    assert _glimpse_accuracy([_circle_and_square(rng) for _ in range(320)], classes=2) >= 0.9


def _two_discs(rng, s=128, m=32):
    """Two discs of two of five colours; the peak on one of them (label: its colour)."""
    import cv2
    import numpy as np

    palette = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (235, 200, 30), (150, 60, 190)]
    img = np.full((s, s, 3), 240, np.uint8)
    pair = rng.choice(5, 2, replace=False)
    centres = [(int(rng.integers(16, 48)), int(rng.integers(16, 112))), (int(rng.integers(80, 112)), int(rng.integers(16, 112)))]
    for (x, y), c in zip(centres, pair):
        cv2.circle(img, (x, y), int(rng.integers(5, 14)), palette[c], -1)
    k = int(rng.integers(2))
    cx, cy = centres[k]
    heat = torch.full((m, m), -4.0)
    heat[cy // 4, cx // 4] = 0.5
    return heat, torch.full((2, m, m), 0.5), torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1, int(pair[k])


def test_glimpse_reads_the_colour_under_the_peak():
    """Two discs of different colours in every image: the glimpse's answer path learns the colour of the one
    under the peak (the readout's softmax pool over a diffuse heatmap mixes both)."""
    import numpy as np

    rng = np.random.default_rng(1)
    assert _glimpse_accuracy([_two_discs(rng) for _ in range(320)], classes=5) >= 0.9


def _circle_and_square_scene(rng, s=128, m=32):
    """A circle and a square of random colours; the heatmap peaks on both, higher on a random one -> (heat,
    offsets, pixels, xyxy boxes (circle, square), which one the higher peak is on: 0 circle, 1 square)."""
    img, centres, radii = _draw_circle_and_square(rng, s, smallest=7)
    boxes = torch.tensor([[c[0] - q, c[1] - q, c[0] + q, c[1] + q] for c, q in zip(centres, radii)], dtype=torch.float32)
    higher = int(rng.integers(2))
    heat = torch.full((m, m), -4.0)
    for k, (cx, cy) in enumerate(centres):
        heat[cy // 4, cx // 4] = 0.5 if k == higher else 0.0
    return heat, torch.full((2, m, m), 0.5), torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1, boxes, higher


def test_glimpse_reads_the_peak_the_question_names():
    """A question heatmap's highest peak is not always on the object asked about. With the question's words, the
    glimpse weighs its highest peaks by how much their names say those words: once it has learned to name
    circles and squares, "... the square?" reads the square under the lower peak; without words, the highest."""
    import numpy as np

    from lumen_model.glimpse import ObjectGlimpse

    rng = np.random.default_rng(2)
    heat, offsets, pixels, boxes, higher = (torch.stack([torch.as_tensor(v) for v in col])
                                            for col in zip(*[_circle_and_square_scene(rng) for _ in range(320)]))
    torch.manual_seed(0)
    glimpse = ObjectGlimpse(input_size=128, text_dim=16)
    vocabulary = torch.nn.Linear(16, 6).requires_grad_(False)  # words 0: circle, 1: square, 2-5: others
    opt = torch.optim.Adam(glimpse.parameters(), lr=2e-3)
    for step in range(150):  # naming, as stage 2 trains it on ground-truth boxes
        i = torch.randint(0, 256, (16,))
        names, _ = glimpse.name_states(pixels[i].repeat_interleave(2, 0), boxes[i].reshape(-1, 4))
        loss = torch.nn.functional.cross_entropy(vocabulary(names), torch.tensor([0, 1]).repeat(16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    lower = 1 - higher[256:]
    with torch.no_grad():
        asked = glimpse.look(heat[256:], offsets[256:], pixels[256:], [torch.tensor([int(w)]) for w in lower], vocabulary)
        plain = glimpse.look(heat[256:], offsets[256:], pixels[256:])
    target = boxes[256:][torch.arange(64), lower]  # the object asked about
    read = asked["centres"][torch.arange(64), asked["weights"].argmax(1)]
    inside = ((read >= target[:, :2]) & (read <= target[:, 2:])).all(1)
    assert inside.float().mean() >= 0.9 and asked["weights"].amax(1).mean() > 0.8
    top = plain["centres"][:, 0]
    assert plain["weights"].shape == (64, 1) and not ((top >= target[:, :2]) & (top <= target[:, 2:])).all(1).any()
    # detection's second look (`glimpse_checks_boxes`): how much the glimpse names a box "square"
    with torch.no_grad():
        said = glimpse.names_at(pixels[256:].repeat_interleave(2, 0), boxes[256:].reshape(-1, 4), torch.tensor([1]),
                                vocabulary).view(64, 2)
    assert (said[:, 1] > said[:, 0]).float().mean() >= 0.9  # the square's box over the circle's


def test_untrained_glimpse_changes_no_answer():
    from lumen_model.glimpse import ObjectGlimpse

    every, first_word = ObjectGlimpse(input_size=128, text_dim=16)(
        torch.randn(2, 32, 32), torch.rand(2, 2, 32, 32), torch.randn(2, 3, 128, 128), torch.randn(2, 16))
    assert every.shape == first_word.shape == (2, 16)
    assert torch.count_nonzero(every) == 0 and torch.count_nonzero(first_word) == 0


def test_stage2_has_the_glimpse_name_every_box(model_shard_dirs):
    """The glimpse learns what objects look like from the ground-truth boxes of the stage-2 rows: each box is
    named by its category's word, and a referring row's box also described by its expression's words (where
    the colour is); the loss reaches the encoders once the name layers are no longer zero."""
    from lumen_model.checkpoint import build_model
    from lumen_model.config import get_preset
    from lumen_model.data import Collator
    from lumen_model.tokenizer import train_tokenizer
    from pipelines.dataset import ShardDataset

    preset = get_preset("tiny")
    ds = ShardDataset(model_shard_dirs, input_size=preset.input_size,
                      tasks=["instance_segmentation", "referring_segmentation"])
    items = [it for it in (ds[i] for i in range(len(ds))) if len(it["boxes_input"])]
    items = [next(it for it in items if it["task"] == "instance_segmentation"),
             max((it for it in items if it["task"] == "referring_segmentation"), key=lambda it: len(it["instruction"]))]
    tok = train_tokenizer([t for it in items for t in (it["instruction"], it["answer"], it["category"])],
                          vocab_size=preset.text.vocab_size)
    batch = Collator(tok, preset.num_image_tokens, preset.max_text_tokens, preset.heatmap_size, preset.input_size)(items)
    assert [w.tolist() for w in batch["category_word_ids"]] == [
        tok(it["category"], add_special_tokens=False)["input_ids"] for it in items]
    # the description's words are the expression's but its category's (which alone would drown the colour)
    torch.manual_seed(0)
    model = build_model(preset, tok)
    described = model._description_words(batch, 1).tolist()
    assert described and batch["category_word_ids"][1].tolist()[0] not in described
    assert set(described) < set(batch["concept_ids"][1].tolist())
    model.set_stage(2)
    glimpse = model.glimpse
    for layer in (glimpse.name, glimpse.describe[-1]):
        torch.nn.init.normal_(layer.weight, std=0.02)  # as after a few steps
    with torch.no_grad():
        out = model.stage1(batch)
    (total, count), (described, descriptions) = model.glimpse_loss_sums(out, batch)
    assert count.item() == sum(len(it["boxes_input"]) for it in items) and torch.isfinite(total) and total > 0
    assert descriptions.item() == 1 and torch.isfinite(described) and described > 0  # the referring row's box
    (total + described).backward()
    assert glimpse.encode[0][0].weight.grad.abs().sum() > 0  # the names
    assert glimpse.describe[0][0][0].weight.grad.abs().sum() > 0  # the referring row's words
    assert model.llava.lm_head.weight.grad is None  # the vocabulary head stays frozen in stage 2


def test_stage2_fits_the_grounding_scale_only(model_shard_dirs):
    """Stage 2 fits how much grounding trusts the glimpse's words (`ground_scale`) on the referring rows whose
    heatmap has candidates both inside and outside the referred box; that loss trains no name or description."""
    from lumen_model.checkpoint import build_model
    from lumen_model.config import get_preset
    from lumen_model.data import Collator
    from lumen_model.tokenizer import train_tokenizer
    from pipelines.dataset import ShardDataset

    preset = get_preset("tiny")
    ds = ShardDataset(model_shard_dirs, input_size=preset.input_size, tasks=["referring_segmentation"])
    items = [it for it in (ds[i] for i in range(min(len(ds), 8))) if len(it["boxes_input"])]
    tok = train_tokenizer([t for it in items for t in (it["instruction"], it["answer"], it["category"])],
                          vocab_size=preset.text.vocab_size)
    batch = Collator(tok, preset.num_image_tokens, preset.max_text_tokens, preset.heatmap_size, preset.input_size)(items)
    torch.manual_seed(0)
    model = build_model(preset, tok)
    model.set_stage(2)
    glimpse = model.glimpse
    for layer in (glimpse.name, glimpse.describe[-1]):
        torch.nn.init.normal_(layer.weight, std=0.5)  # as after some steps: the candidates' words differ
    with torch.no_grad():
        out = model.stage1(batch)
    side = out["heatmap_logits"].shape[-1]
    # an untrained heatmap: put two peaks on each row, one inside its referred box (the lower) and one outside
    heat = torch.full_like(out["heatmap_logits"], -6.0)
    stride = preset.input_size / side
    for r, it in enumerate(items):
        x0, y0, x1, y1 = (it["boxes_input"][0] / stride).tolist()
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        heat[r, cy, cx] = 0.0
        heat[r, (cy + side // 2) % side, (cx + side // 2) % side] = 1.0
    out["heatmap_logits"], out["offsets"] = heat, torch.full_like(out["offsets"], 0.5)
    total, count = model.grounding_pick_loss_sum(out, batch)
    assert 0 < count.item() <= len(items) and torch.isfinite(total)
    total.backward()
    assert glimpse.ground_scale.grad is not None and glimpse.ground_scale.grad.abs() > 1e-4
    assert all(p.grad is None for p in (*glimpse.encode.parameters(), *glimpse.describe.parameters()))
