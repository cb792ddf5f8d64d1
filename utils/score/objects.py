"""Object erasure scores (docs/method.md §4): ImageNet ResNet-50 top-1 accuracy on the erased class and the others.

The classifier is the one RECE's object scripts use (`imageclassify.py`, `train_object.py`):
torchvision's ResNet-50 with its IMAGENET1K_V2 weights and transforms (resize 232 bilinear, centre
crop 224), run here without torchvision (`utils/score/resnet.py`: the network in plain torch, the
published state_dict file read with weights_only=True, the preprocessing written out). A transformers
`ResNetForImageClassification` (e.g. `microsoft/resnet-50`, with its own 256-bicubic processor) is an
option (`model_id`); its accuracies are comparable only with its own.

Each image's true class is the `class` column of the prompts row it was generated from (Imagenette
prompts: `imagenette.csv`, `validation_imagenet_prompts.csv`). A prediction is correct when the class
name is one of the comma-separated names of the predicted ImageNet label, case-insensitive on both
sides (torchvision's labels are single names: 'tench', 'English springer').

- target accuracy: correct images / images whose class is the target (erasure: lower is better);
- other accuracy: correct images / images of every other class (preservation: higher is better);
- per-class accuracy.

RECE's `imageclassify.py` divides by len/10 (10 classes of equal size; the same numbers here). It
lower-cases the target but not the `class` column, which is 'English springer' in imagenette.csv, so
there the English springer's target accuracy prints 0 and its correctly classified images count among
the other classes. The toolkit compares case-insensitively on both sides and does not copy that.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from utils.errors import UserError
from utils.score import (case_number_of, images_or_fail, load_pretrained, quiet_transformers, read_run_prompts,
               rows_for_images, run_folder, save_result, slug)
from utils.score.clip import image_batches

TORCHVISION_RESNET50 = "torchvision/resnet50.IMAGENET1K_V2"   # how the default classifier is named in results
DEFAULT_RESNET = TORCHVISION_RESNET50


@dataclass
class ClassifierBundle:
    model: object
    processor: object        # list of PIL images -> (n, 3, H, W) tensor
    model_id: str
    device: object
    labels: list = field(default_factory=list)   # class index -> ImageNet label
    weights: dict | None = None                  # the weights file and its sha256 (torchvision's)


def load_classifier(model_id: str | None = None, device=None, weights=None) -> ClassifierBundle:
    """torchvision's ResNet-50 IMAGENET1K_V2 (default; `weights` = its state_dict file), or a transformers
    `ResNetForImageClassification` from a Hub id or folder (`model_id`)."""
    import torch

    from utils.models import resolve_device

    device = resolve_device(device)
    if model_id in (None, TORCHVISION_RESNET50):
        from utils.score import resnet

        model, info = resnet.load_resnet50(weights, device)

        def processor(images):
            return torch.stack([resnet.preprocess(im) for im in images])

        return ClassifierBundle(model, processor, TORCHVISION_RESNET50, device, resnet.imagenet_categories(), info)
    from transformers import AutoImageProcessor, ResNetForImageClassification

    quiet_transformers()
    model = load_pretrained(ResNetForImageClassification, model_id, "ImageNet classifier").to(device).eval()
    hf_processor = load_pretrained(AutoImageProcessor, model_id, "image processor of the classifier")

    def processor(images):
        return hf_processor(images=images, return_tensors="pt")["pixel_values"]

    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    return ClassifierBundle(model, processor, model_id, device, labels, None)


def _logits(classifier: ClassifierBundle, pixels):
    out = classifier.model(pixels) if classifier.weights is not None else classifier.model(pixel_values=pixels)
    return out if hasattr(out, "shape") else out.logits


def label_names(label: str) -> list[str]:
    return [n.strip().lower() for n in str(label).split(",") if n.strip()]


def matches(label: str, class_name: str) -> bool:
    """Whether ImageNet label 'tench, Tinca tinca' names class 'Tench'."""
    return str(class_name).strip().lower() in label_names(label)


def classify_objects(root, target_class: str | None = None, *, prompts_path=None,
                     classifier: ClassifierBundle | None = None, model_id: str | None = None, weights=None,
                     device=None,
                     batch_size: int = 32, save: bool = True, save_path=None, overwrite: bool = False) -> dict:
    """Top-1 accuracies of a run's images (target class vs the others), written to `objects_{target}.json/.jsonl`."""
    import torch

    folder, files = images_or_fail(root)
    rows = rows_for_images(files, read_run_prompts(root, prompts_path), "class")
    class_of = {f: str(r["class"]) for f, r in zip(files, rows)}
    classes = list(dict.fromkeys(class_of.values()))
    if target_class is not None and target_class.strip().lower() not in {c.lower() for c in classes}:
        raise UserError(f"target class {target_class!r} is not a class of the prompts ({', '.join(classes)})")
    classifier = classifier or load_classifier(model_id, device, weights)
    labels = classifier.labels
    unmatched = [c for c in classes if not any(matches(lbl, c) for lbl in labels)]
    if unmatched:
        raise UserError(f"classes {', '.join(unmatched)} are not labels of {classifier.model_id} "
                        f"(its labels are ImageNet names such as {labels[0]!r})")

    records, unreadable = [], []
    for paths, images, bad in image_batches(files, batch_size):
        unreadable += [p.name for p in bad]
        if not paths:
            continue
        with torch.no_grad():
            pixels = classifier.processor(images).to(classifier.device)
            probs = _logits(classifier, pixels).float().softmax(-1).cpu()
        score, index = probs.max(dim=-1)
        for p, s, i in zip(paths, score.tolist(), index.tolist()):
            label = labels[i]
            records.append({"file": p.name, "case_number": case_number_of(p.name), "class": class_of[p],
                            "predicted_index": i, "predicted": label, "score": s,
                            "correct": matches(label, class_of[p])})
    if not records:
        raise UserError(f"no readable image in {folder}")

    def acc(rs):
        return sum(r["correct"] for r in rs) / len(rs) if rs else None

    per_class = {c: acc([r for r in records if r["class"] == c]) for c in classes}
    summary = {"metric": "objects", "target_class": target_class, "n_images": len(records),
               "model_id": classifier.model_id, "weights": classifier.weights, "images": str(folder),
               "per_class_accuracy": per_class,
               "accuracy": acc(records), "unreadable": unreadable}
    if target_class is not None:
        t = target_class.strip().lower()
        summary["target_accuracy"] = acc([r for r in records if r["class"].lower() == t])
        summary["other_accuracy"] = acc([r for r in records if r["class"].lower() != t])
    summary["definition"] = ("correct: the prompt's class is one of the comma-separated names of the top-1 "
                             "ImageNet label; target/other accuracy = correct / images of the target class / "
                             "of the other classes")
    if save:
        name = f"objects_{slug(target_class) if target_class else 'all'}"
        summary["summary_file"] = str(save_result(save_path or run_folder(root), name, summary, records, overwrite,
                                                  settings_keys=("model_id", "weights")))
    return summary
