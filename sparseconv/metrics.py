"""Classification scores from a confusion matrix: overall accuracy, Cohen's kappa, per-class IoU."""
import numpy as np


def confusion_matrix(reference, predicted, classes):
    """[len(classes), len(classes)] counts, rows = reference, columns = predicted; codes outside `classes` are
    ignored (both arrays are integer codes of the same length)."""
    reference, predicted = np.asarray(reference), np.asarray(predicted)
    if reference.shape != predicted.shape:
        raise ValueError(f"predicted: expected {reference.shape[0]} labels (the reference's), got {predicted.shape[0]}")
    lut = np.full(256, -1, np.int64)
    lut[np.asarray(classes, np.int64)] = np.arange(len(classes))
    r, p = lut[reference.astype(np.int64)], lut[predicted.astype(np.int64)]
    keep = (r >= 0) & (p >= 0)
    k = len(classes)
    return np.bincount(r[keep] * k + p[keep], minlength=k * k).reshape(k, k)


def scores(confusion):
    """dict(overall_accuracy, kappa, iou [per class], support [per class])."""
    cm = np.asarray(confusion, np.float64)
    total = cm.sum()
    diag = np.diag(cm)
    oa = diag.sum() / total if total else float("nan")
    expected = (cm.sum(0) * cm.sum(1)).sum() / total**2 if total else float("nan")
    kappa = (oa - expected) / (1 - expected) if total and expected < 1 else float("nan")
    union = cm.sum(0) + cm.sum(1) - diag
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, diag / union, np.nan)
    return {"overall_accuracy": float(oa), "kappa": float(kappa), "iou": iou.tolist(),
            "support": cm.sum(1).astype(np.int64).tolist()}


def parse_remap(text):
    """'3,4,5:5;1:1' -> {3: 5, 4: 5, 5: 5, 1: 1} (class remapping for evaluation)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            srcs, dst = part.split(":")
            for s in srcs.split(","):
                out[int(s)] = int(dst)
        except ValueError:
            raise ValueError(f"remap: expected 'a,b,c:d;e:f', got {part!r}") from None
    return out
