"""Loaders for user data given by path: the kinds of data the paper uses.

UCI HAR  the unzipped "UCI HAR Dataset" folder as published: <path>/<part>/X_<part>.txt (561
         whitespace-separated floats per row, e.g. " 2.8858451e-001 -2.0294171e-002 ...") and
         <path>/<part>/y_<part>.txt (one activity 1..6 per line), part "train" or "test".
         Labels come back as 0..5, in the order of UCI_HAR_CLASSES.
features a .csv, one sample per row: numbers, and a label column, the last one unless a header
         row (a first row of names only) names it "label", "class", "target" or "y"; labels are
         integers 0..k-1 or class names (text). Or a .npz holding X (2-D), y (1-D integers or
         names) and optionally `classes` (the names of 0..k-1).
Every problem raises DataError naming the file and what is wrong.
"""
import os

import numpy as np

UCI_HAR_FEATURES = 561
UCI_HAR_CLASSES = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]


class DataError(ValueError):
    """A missing or malformed data file; the message names the file and what is wrong."""


def _rows(path):
    """Numeric rows of a whitespace-separated text file: (line number, [float, ...]) per non-empty line."""
    if not os.path.isfile(path):
        raise DataError("%s: no such file" % path)
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                rows.append((number, [float(v) for v in fields]))
            except ValueError:
                raise DataError("%s, line %d: not a number in %r" % (path, number, line.strip()[:60])) from None
    if not rows:
        raise DataError("%s: no data rows" % path)
    return rows


def _matrix(path, rows, width):
    for number, values in rows:
        if len(values) != width:
            raise DataError("%s, line %d: %d columns, expected %d" % (path, number, len(values), width))
    X = np.array([values for _, values in rows], dtype=np.float64)
    if not np.isfinite(X).all():
        number = rows[int(np.argmax(~np.isfinite(X).all(axis=1)))][0]
        raise DataError("%s, line %d: a value is NaN or infinite" % (path, number))
    return X


def _labels(path, y, n_classes=None):
    try:
        y = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError("%s: labels must be numbers" % path) from None
    if not np.isfinite(y).all() or (y != np.round(y)).any() or (y < 0).any():
        raise DataError("%s: labels must be non-negative integers" % path)
    if n_classes is not None and (y >= n_classes).any():
        raise DataError("%s: labels must be below %d" % (path, n_classes))
    return y.astype(np.int64)


def load_uci_har(path, part="train"):
    """(X float32 [n, 561], y int64 [n] in 0..5) of the UCI HAR `part` ("train" or "test")."""
    if part not in ("train", "test"):
        raise ValueError("part must be 'train' or 'test', got %r" % part)
    if not os.path.isdir(path):
        raise DataError("%s: no such folder (the unzipped 'UCI HAR Dataset')" % path)
    x_path = os.path.join(path, part, "X_%s.txt" % part)
    y_path = os.path.join(path, part, "y_%s.txt" % part)
    X = _matrix(x_path, _rows(x_path), UCI_HAR_FEATURES)
    y_rows = _rows(y_path)
    y = _matrix(y_path, y_rows, 1)[:, 0]
    if len(y) != len(X):
        raise DataError("%s: %d labels for the %d rows of %s" % (y_path, len(y), len(X), x_path))
    if (y < 1).any():
        raise DataError("%s: activities are numbered 1..6" % y_path)
    return X.astype(np.float32), _labels(y_path, y - 1, len(UCI_HAR_CLASSES))


LABEL_COLUMNS = ("label", "class", "target", "y")


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _separator_hint(text):
    """Why a .csv row did not split into numbers, when another separator is in it."""
    for name, sep in (("semicolons", ";"), ("tabs", "\t")):
        if sep in text:
            return " (this file seems to separate its columns with %s; a .csv here takes commas)" % name
    return ""


def _csv_columns(path):
    """(X float64 [n, d], raw labels [n] as text): the label column as the header names it, else the last."""
    if not os.path.isfile(path):
        raise DataError("%s: no such file" % path)
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(n, [v.strip() for v in line.split(",")]) for n, line in enumerate(f, 1) if line.strip()]
    if lines and not any(_is_number(v) for v in lines[0][1]):  # a header: names only
        names = [v.lower() for v in lines.pop(0)[1]]
        label_at = next((names.index(c) for c in LABEL_COLUMNS if c in names), len(names) - 1)
    else:
        label_at = len(lines[0][1]) - 1 if lines else -1
    if not lines:
        raise DataError("%s: no data rows" % path)
    width = len(lines[0][1])
    if width < 2:
        raise DataError("%s: needs at least one feature column and a label column%s" % (
            path, _separator_hint(lines[0][1][0])))
    rows, labels = [], []
    for number, fields in lines:
        if len(fields) != width:
            raise DataError("%s, line %d: %d columns, expected %d" % (path, number, len(fields), width))
        for column, v in enumerate(fields):
            if column != label_at and not _is_number(v):
                raise DataError("%s, line %d, column %d: %r is not a number%s" % (
                    path, number, column + 1, v[:40], _separator_hint(v)))
        labels.append(fields[label_at])
        rows.append((number, fields[:label_at] + fields[label_at + 1:]))
    X = _matrix(path, [(n, [float(v) for v in fields]) for n, fields in rows], width - 1)
    return X, labels, [number for number, _ in rows]


def _named_labels(path, labels, classes):
    """Class names as labels -> (indices into `classes`, classes); classes default to the sorted names."""
    labels = [str(v) for v in labels]
    classes = list(classes) if classes else sorted(set(labels))
    index = {name: k for k, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError("%s: label(s) %s not among the classes %s" % (path, ", ".join(unknown[:5]), ", ".join(classes)))
    return np.array([index[v] for v in labels], np.int64), classes


def _labels_and_classes(path, labels, classes, numbers):
    is_number = [_is_number(str(v)) for v in labels]
    if any(is_number) and not all(is_number) and not classes:  # a stray text label would become a class
        at = is_number.index(False) if sum(is_number) > len(labels) // 2 else is_number.index(True)
        raise DataError("%s, line %d: label %r among %s labels: give every row a number (0..k-1) or every row a "
                        "name" % (path, numbers[at], labels[at], "text" if is_number[at] else "numeric"))
    if not all(is_number):
        return _named_labels(path, labels, classes)
    y = _labels(path, [float(v) for v in labels], len(classes) if classes else None)
    return y, list(classes) if classes else None


def load_features(path, classes=None):
    """(X float32 [n, d], y int64 [n], class names or None) from a .csv or .npz (module docstring).

    classes: the names of 0..k-1 (e.g. the lab file's, for its drifted copy): text labels are
    mapped by them, integer labels must be below k. None: text labels give their sorted names."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        X, labels, numbers = _csv_columns(path)
        y, names = _labels_and_classes(path, labels, classes, numbers)
        return X.astype(np.float32), y, names
    if ext == ".npz":
        if not os.path.isfile(path):
            raise DataError("%s: no such file" % path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in ("X", "y", "classes") if k in npz.files}
        except (OSError, ValueError) as e:
            raise DataError("%s: not a readable .npz (%s)" % (path, e)) from None
        for key in ("X", "y"):
            if key not in arrays:
                raise DataError("%s: no array %r (it needs X and y)" % (path, key))
        X, y = arrays["X"], arrays["y"]
        if X.ndim != 2 or y.ndim != 1:
            raise DataError("%s: X must be 2-D and y 1-D, got shapes %s and %s" % (path, X.shape, y.shape))
        if len(X) != len(y):
            raise DataError("%s: %d rows in X but %d labels in y" % (path, len(X), len(y)))
        if not np.issubdtype(X.dtype, np.number) or not np.isfinite(X).all():
            raise DataError("%s: X must be finite numbers" % path)
        if classes is None and "classes" in arrays:
            classes = [str(c) for c in arrays["classes"]]
        if np.issubdtype(y.dtype, np.number):
            labels, names = _labels(path, y, len(classes) if classes else None), classes
        else:
            labels, names = _named_labels(path, y, classes)
        return X.astype(np.float32), labels, (list(names) if names else None)
    raise DataError("%s: unsupported file type %r (use .csv or .npz)" % (path, ext or "no extension"))
