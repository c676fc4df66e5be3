"""VQAv2 questions ask for a short answer; the chats' same questions do not (LLaVA-1.5's data recipe)."""

from lumen_model.data import SHORT_ANSWER, model_instruction


def test_vqav2_questions_ask_for_a_short_answer_and_chats_do_not():
    q = "How many triangles are there?"
    assert model_instruction({"task": "vqa", "source": "vqav2", "instruction": q}) == f"{q} {SHORT_ANSWER}"
    assert model_instruction({"task": "vqa", "source": "llava", "instruction": q}) == q  # "There is one triangle."
    det = "Please find the location of all circle in the image. Respond with boxes."
    assert model_instruction({"task": "detection", "source": "coco", "instruction": det}) == det
