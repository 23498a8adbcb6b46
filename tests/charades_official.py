"""The official Charades scorers (Allen AI's Charades_v1_classify.m and Charades_v1_localize.m, adapted from THUMOS15)
transcribed statement by statement, loops and all, from the files they read: the ground-truth CSV and a submission
file. Independent of metrics.py, so the tests can hold the project's printed mAP against what the official code
would print for the same files. Returns the per-class APs (NaN for a class without a positive, as MATLAB's 0 / 0)."""
import csv
import math

NUM_FRAMES_PER_VIDEO = 25


def _read_csv(gt_path):
    with open(gt_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _class_number(code):
    return int(float(code[1:]))                      # str2double(class(2:end))


def load_charades(gt_path):
    """load_charades: a row whose `actions` is empty `continue`s before `gtids{i} = id`, so its id stays empty."""
    gt_ids, gt_classes = [], []
    for row in _read_csv(gt_path):
        actions = row["actions"]
        if len(actions) == 0:
            gt_ids.append(None)
            gt_classes.append([])
            continue
        gt_ids.append(row["id"])
        gt_classes.append([_class_number(item.split(" ")[0]) for item in actions.split(";")])
    return gt_ids, gt_classes


def load_charades_localized(gt_path, frames_per_video=NUM_FRAMES_PER_VIDEO):
    """load_charades_localized: every row gives 25 frame ids `<id>-001` .. `<id>-025`, each with the classes whose
    [start, end] holds (j - 1) / 25 * length."""
    gt_ids, gt_classes = [], []
    for row in _read_csv(gt_path):
        actions = row["actions"]
        length = float(row["length"])
        parsed = [] if actions == "" else [
            (_class_number(item.split()[0]), float(item.split()[1]), float(item.split()[2]))
            for item in actions.split(";")]
        for j in range(1, frames_per_video + 1):
            timepoint = (j - 1) / frames_per_video * length
            gt_ids.append(f"{row['id']}-{j:03d}")
            gt_classes.append([c for c, s, e in parsed if s <= timepoint <= e])
    return gt_ids, gt_classes


def thumos_event_cls_pr(conf, labels):
    """THUMOSeventclspr: `[so, sortind] = sort(-conf)` (MATLAB's sort is stable), precision at each positive."""
    negated = [-c for c in conf]
    sortind = sorted(range(len(conf)), key=lambda i: negated[i])      # Python's sort is stable too
    tp_flags = [labels[i] == 1 for i in sortind]
    npos = sum(1 for label in labels if label == 1)
    tp = fp = 0
    prec = []
    for flag in tp_flags:
        tp += flag
        fp += not flag
        prec.append(tp / (fp + tp))
    ap = 0.0
    for i in range(len(conf)):
        if tp_flags[i]:
            ap = ap + prec[i]
    return ap / npos if npos else math.nan


def _score(ids, classes, predictions, num_classes):
    gtlabel = [[0] * num_classes for _ in ids]
    test = [[-math.inf] * num_classes for _ in ids]
    for i, video_id in enumerate(ids):
        for c in classes[i]:
            gtlabel[i][c] = 1
        if video_id is not None and video_id in predictions:        # predictions.isKey(id)
            test[i] = predictions[video_id]
    return [thumos_event_cls_pr([row[c] for row in test], [row[c] for row in gtlabel]) for c in range(num_classes)]


def _read_submission(path, num_classes, key_fields, key):
    """id (from the first `key_fields` fields) -> scores; str2double reads 'Inf' / '-Inf' as Python's float does."""
    predictions = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            predictions[key(fields)] = [float(z) for z in fields[key_fields:key_fields + num_classes]]
    return predictions


def charades_v1_classify(submission_path, gt_path, num_classes):
    ids, classes = load_charades(gt_path)
    predictions = _read_submission(submission_path, num_classes, 1, lambda fields: fields[0])
    return _score(ids, classes, predictions, num_classes)


def charades_v1_localize(submission_path, gt_path, num_classes):
    ids, classes = load_charades_localized(gt_path)
    predictions = _read_submission(submission_path, num_classes, 2, lambda fields: f"{fields[0]}-{int(fields[1]):03d}")
    return _score(ids, classes, predictions, num_classes)


def mean_over_defined(aps):
    """The mean of the APs that are defined (classes with a positive), in percent."""
    defined = [ap for ap in aps if not math.isnan(ap)]
    return 100.0 * sum(defined) / len(defined)
