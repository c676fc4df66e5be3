"""VQAv2 questions ask for a short answer; the chats' same questions do not (LLaVA-1.5's data recipe)."""

from lumen_model.data import SHORT_ANSWER, model_instruction


def test_vqav2_questions_ask_for_a_short_answer_and_chats_do_not():
    q = "How many triangles are there?"
    assert model_instruction({"task": "vqa", "source": "vqav2", "instruction": q}) == f"{q} {SHORT_ANSWER}"
    assert model_instruction({"task": "vqa", "source": "llava", "instruction": q}) == q  # "There is one triangle."
    det = "Please find the location of all circle in the image. Respond with boxes."
    assert model_instruction({"task": "detection", "source": "coco", "instruction": det}) == det


def _vqa_batch(shard_dirs, preset, n=16):
    from lumen_model.data import Collator
    from lumen_model.tokenizer import train_tokenizer
    from pipelines.dataset import ShardDataset

    ds = ShardDataset(shard_dirs, input_size=preset.input_size, tasks=["vqa"])
    items = [ds[i] for i in range(n)]
    tok = train_tokenizer([t for it in items for t in (it["instruction"], it["answer"])] + ["user : assistant :", SHORT_ANSWER],
                          vocab_size=preset.text.vocab_size)
    collate = Collator(tok, preset.num_image_tokens, preset.max_text_tokens, preset.heatmap_size, preset.input_size)
    return tok, collate(items)


def _answer_gradient_per_token(model, batch) -> tuple[float, float]:
    """Mean gradient norm of the answers' loss at an image token and at a text token of the LLM's input."""
    import torch
    import torch.nn.functional as F

    image_feats, pixel_feats = model.vision(batch)
    image_tokens = model.llm_image_tokens(image_feats, pixel_feats[1])
    image_tokens.retain_grad()
    embeds = model.llava.get_input_embeddings()(batch["input_ids"])
    embeds.retain_grad()
    is_image = batch["input_ids"] == model.image_token_id
    inputs = embeds.masked_scatter(is_image.unsqueeze(-1), image_tokens.reshape(-1, embeds.shape[-1]))
    hidden = model.llava.model.language_model(inputs_embeds=inputs, attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    answer = labels != -100
    F.cross_entropy(model.lm_logits(hidden[:, :-1][answer]), labels[answer]).backward()
    text = ~is_image & (batch["attention_mask"] > 0)
    with torch.no_grad():
        return image_tokens.grad.norm(dim=-1).mean().item(), embeds.grad[text].norm(dim=-1).mean().item()


def test_normed_image_tokens_get_the_answers_gradient(model_shard_dirs):
    """With `llm_image_norm` the LLM's image tokens (ViT + CNN) sit at the text embeddings' scale, and the
    answer's loss moves them about as much as the question's words. Without it the tiny preset's CNN tokens
    are ~28x the text embeddings at initialisation (~50-90x after training) and got ~400-600x less
    gradient per token than a word (README, "Measured": VQA)."""
    import dataclasses

    import torch

    from lumen_model.checkpoint import build_model
    from lumen_model.config import get_preset

    preset = dataclasses.replace(get_preset("tiny"), llm_image_norm=True)
    tok, batch = _vqa_batch(model_shard_dirs, preset)
    torch.manual_seed(0)
    model = build_model(preset, tok)
    with torch.no_grad():
        image_feats, pixel_feats = model.vision(batch)
        image = model.llm_image_tokens(image_feats, pixel_feats[1])
        words = model.llava.get_input_embeddings()(batch["input_ids"][batch["input_ids"] != model.image_token_id])
    scale = image.norm(dim=-1).mean() / words.norm(dim=-1).mean()
    assert 0.2 < scale < 5, f"image tokens are {scale:.1f}x the text embeddings"
    image_grad, text_grad = _answer_gradient_per_token(model, batch)
    assert image_grad > 0.05 * text_grad, f"gradient per image token {image_grad:.2e}, per text token {text_grad:.2e}"


def test_vqa_rows_name_their_answer_position_and_question_words(model_shard_dirs):
    """`answer_index` is the state whose next token is the answer's first word (what `vqa_concept_weight`
    asks to name the question's words); rows of other tasks have none."""
    from lumen_model.config import get_preset
    from pipelines.dataset import ShardDataset

    preset = get_preset("tiny")
    tok, batch = _vqa_batch(model_shard_dirs, preset, n=4)
    for i in range(4):
        j = int(batch["answer_index"][i])
        assert batch["labels"][i, j] == -100 and batch["labels"][i, j + 1] != -100
        assert tok.decode(batch["input_ids"][i, j]) == ":"  # "... assistant :" then the answer
        assert len(batch["question_ids"][i])
    from lumen_model.data import Collator

    ds = ShardDataset(model_shard_dirs, input_size=preset.input_size, tasks=["detection"])
    other = Collator(tok, preset.num_image_tokens, preset.max_text_tokens, preset.heatmap_size,
                     preset.input_size)([ds[0]])
    assert other["answer_index"].tolist() == [-1] and not len(other["question_ids"][0])


def test_the_answer_reads_the_image_where_the_question_points(model_shard_dirs):
    """With `vqa_readout`, the question's state drives the aligner and what its heatmap points at is added to
    the answer positions only: another image gives another readout (the answer can follow the image), and
    the question's own positions are left as the LLM computed them."""
    import torch

    from lumen_model.checkpoint import build_model
    from lumen_model.config import get_preset

    preset = get_preset("tiny")
    assert preset.vqa_readout
    tok, batch = _vqa_batch(model_shard_dirs, preset)
    torch.manual_seed(0)
    model = build_model(preset, tok).eval()
    torch.nn.init.normal_(model.vqa_readout.mlp[-1].weight, std=0.02)  # as after training: not zero
    assert len(batch["images"]) > 1
    other = dict(batch, images=batch["images"].roll(1, 0))  # every question about another image
    with torch.no_grad():
        out, moved = model.stage1(batch, dense=False), model.stage1(other, dense=False)
        hidden = model.answer_hidden(out, batch)
    assert (out["vqa_readout"] - moved["vqa_readout"]).norm(dim=1).min() > 1e-3
    before = torch.arange(hidden.shape[1]).unsqueeze(0) < batch["answer_index"].unsqueeze(1)
    assert torch.equal(hidden[before], out["hidden"][before]) and not torch.equal(hidden[~before], out["hidden"][~before])


def test_stage2_trains_the_readout_on_frozen_features(model_shard_dirs):
    """Stage 2 trains the VQA readout again, as the tiny preset's answer decoder, on the stage-1 features it
    reads (frozen there): the answers' loss reaches the readout and nothing of stage 1, and a few steps on
    the same questions lower it."""
    import torch

    from lumen_model.checkpoint import build_model
    from lumen_model.config import get_preset

    preset = get_preset("tiny")
    tok, batch = _vqa_batch(model_shard_dirs, preset, n=8)
    torch.manual_seed(0)
    model = build_model(preset, tok)
    model.set_stage(2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(8):
        out = model(batch, stage=2)
        opt.zero_grad()
        out["loss"].backward()
        losses.append(float(out["vqa"]))
        if len(losses) == 1:
            assert all(p.grad is None for p in model.llava.parameters())
            assert all(p.grad is None for p in model.aligner.parameters())
            assert model.vqa_readout.mlp[-1].weight.grad.abs().sum() > 0
        opt.step()
    assert losses[-1] < 0.9 * losses[0], losses


def test_stage2_plans_questions_only_for_a_model_with_a_readout(model_shard_dirs, tmp_path):
    from lumen_model.train import TrainConfig, plan_training

    def tasks(preset):
        cfg = TrainConfig(stage=2, preset=preset, shards=model_shard_dirs, out=str(tmp_path / preset), progress=False)
        plan = plan_training(cfg)
        return set(plan.dataset.column("task").to_pylist())

    assert "vqa" in tasks("tiny")
    assert "vqa" not in tasks("lumen-7b")


def test_the_readout_learns_faster_in_stage2_only(model_shard_dirs, tmp_path):
    """`readout_lr_scale` speeds up the readout where it trains alone on frozen features (stage 2); stage 1
    keeps one learning rate for everything (5x there cost detection AP)."""
    from lumen_model.checkpoint import build_model
    from lumen_model.config import get_preset
    from lumen_model.train import TrainConfig, param_groups

    preset = get_preset("tiny")
    tok, _ = _vqa_batch(model_shard_dirs, preset, n=2)
    model = build_model(preset, tok)
    # the answer decoder: the readout and (tiny preset) the glimpse, both trained alone in stage 2
    readout = {id(p) for part in (model.vqa_readout, model.glimpse) for p in part.parameters()}
    for stage, want in ((1, [None]), (2, [None, 5 * 1e-3])):
        model.set_stage(stage)
        cfg = TrainConfig(stage=stage, shards=model_shard_dirs, out=str(tmp_path), lr=1e-3, readout_lr_scale=5.0)
        groups = param_groups(model, cfg)
        assert [g.get("lr") for g in groups] == want
        assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
        if stage == 2:
            assert {id(p) for p in groups[1]["params"]} == readout
