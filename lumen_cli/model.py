"""`lumen train`, `lumen predict`, `lumen ask`, `lumen evaluate`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from lumen_model.predict_config import PredictSettings
    from lumen_model.train_config import build_arg_parser
    from pipelines.settings import add_arguments
    from pipelines.tasks import EVAL_NAMES, NAMES  # the task registry: each front's --task choices

    p = sub.add_parser("train", help="train stage 1 (heatmaps) or stage 2 (decoders) on shard folders",
                       description="Stage-wise Lumen training. Multi-process: torchrun --nproc_per_node N -m lumen_model.train ...")
    build_arg_parser(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="run a checkpoint over images; COCO results json + heatmap PNGs",
                       description="Predict boxes / masks / keypoints / grounding boxes / VQA answers.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (stage 2 for masks and keypoints)")
    p.add_argument("--task", required=True, choices=NAMES)
    p.add_argument("--images", required=True, help="image folder (without --annotations: every image in it)")
    p.add_argument("--annotations", help="COCO json naming the images (ids) and categories to predict: an instances "
                                         "json, or an image_info json (images without labels, e.g. the unlabeled pool "
                                         "coco/annotations/image_info_unlabeled.json)")
    p.add_argument("--categories", nargs="+", help="category names, when no json names them (default: the "
                                                   "checkpoint's own categories)")
    p.add_argument("--expressions", help="grounding/refseg: JSON list of {sent_id, image_id, file_name, expression}")
    p.add_argument("--questions", help="vqa: VQAv2 questions json")
    add_arguments(p, PredictSettings)  # --batch-size, --score-threshold, --flip-tta/--no-flip-tta
    p.add_argument("--out", required=True, help="results json (heatmaps go to <out stem>_heatmaps/)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("ask", help="ask a checkpoint about one image: boxes / masks / keypoints / answer as JSON",
                       description="One typed instruction about one image, answered as JSON (boxes in image pixels, "
                                   "scores, masks as RLE, keypoints, the heatmap's peaks, the text answer, timings). "
                                   "Decoded exactly as `lumen predict` decodes: same boxes and scores.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--instruction", required=True,
                   help="what to find or ask: 'every square', 'the star left of the person', 'what colour is the "
                        "triangle?'")
    p.add_argument("--task", default="auto", choices=("auto", *NAMES),
                   help="auto (default): a question is answered, 'every X' finds every X, anything else one object")
    add_arguments(p, PredictSettings, ("score_threshold", "flip_tta"))
    p.add_argument("--skip-box", action="append", type=_pixel_box, metavar="X,Y,W,H", dest="skip_boxes",
                   help="an object already labeled on the image (pixels): asked for one object, the answer is the best "
                        "candidate that is none of these (repeat for each; the App passes the sample's labels)")
    p.add_argument("--heatmap", metavar="PNG", help="also save the heatmap at image size as a grayscale PNG")
    p.add_argument("--no-masks", action="store_true", help="leave the (long) RLE masks out of the JSON")
    p.set_defaults(func=_ask)

    p = sub.add_parser("evaluate", help="metrics JSON for predictions against ground truth",
                       description="bbox/segm/keypoints: COCO AP via pycocotools; grounding: acc@0.5; "
                                   "refseg: cIoU and gIoU; vqa: VQAv2 accuracy.")
    p.add_argument("--task", required=True, choices=EVAL_NAMES)
    p.add_argument("--gt", required=True, help="ground truth (COCO json, expressions json, or VQAv2 annotations json)")
    p.add_argument("--pred", required=True, help="predictions json")
    p.add_argument("--out", help="also write the metrics here")
    p.set_defaults(func=_evaluate)


def _pixel_box(text: str) -> list[float]:
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H in pixels with W, H > 0, got {text!r}")
    return box


def _train(args) -> int:
    from lumen_model.train import config_from_args, train

    print(json.dumps(train(config_from_args(args)), indent=2))
    return 0


def _predict(args) -> int:
    from lumen_model.checkpoint import read_config
    from lumen_model.predict import predict
    from lumen_model.predict_config import PredictSettings
    from pipelines.settings import values_from_args
    from pipelines.tempdirs import check_output_file

    # what would otherwise fail after the model load, or after all the work (the results file is written last)
    settings = PredictSettings(**values_from_args(args, PredictSettings))
    check_output_file(args.out)
    read_config(args.checkpoint)  # a missing folder or a broken config.json: one line naming it
    res = predict(args.checkpoint, args.task, args.images, args.out, annotations=args.annotations,
                  categories=args.categories, expressions=args.expressions, questions=args.questions,
                  **settings.model_dump())
    print(json.dumps(res, indent=2))
    return 0


def _evaluate(args) -> int:
    from pathlib import Path

    from pipelines.evaluation import evaluate

    metrics = evaluate(args.task, args.gt, args.pred)
    text = json.dumps(metrics, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _ask(args) -> int:
    from pathlib import Path

    from lumen_model.ask import load_asker
    from lumen_model.predict_config import PredictSettings
    from pipelines.heatmaps import encode_png

    settings = PredictSettings(score_threshold=args.score_threshold, flip_tta=args.flip_tta)
    answer = load_asker(args.checkpoint, score_threshold=settings.score_threshold).ask(
        args.image, args.instruction, args.task, flip_tta=settings.flip_tta, skip_boxes=args.skip_boxes)
    out = answer.to_json(masks=not args.no_masks)
    if args.heatmap and answer.grid is not None:
        Path(args.heatmap).parent.mkdir(parents=True, exist_ok=True)
        Path(args.heatmap).write_bytes(encode_png(answer.heatmap()))
        out["heatmap"]["file"] = str(args.heatmap)
    print(json.dumps(out, indent=2))
    return 0
