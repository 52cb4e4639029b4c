"""Loaders for user data, on fixtures written in the datasets' own on-disk formats."""
import numpy as np
import pytest

from skip2lora.data.loaders import UCI_HAR_CLASSES, UCI_HAR_FEATURES, DataError, load_features, load_uci_har


def write_har(root, part, X, y):
    folder = root / part
    folder.mkdir(parents=True, exist_ok=True)
    # the published files: space-padded, C-style 3-digit exponents
    (folder / ("X_%s.txt" % part)).write_text("".join(
        "".join(" %15s" % ("%.7e" % v).replace("e-0", "e-00").replace("e+0", "e+00") for v in row) + "\n"
        for row in X))
    (folder / ("y_%s.txt" % part)).write_text("".join("%d\n" % v for v in y))


@pytest.fixture
def har(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (7, UCI_HAR_FEATURES)).astype(np.float32)
    y = np.array([1, 2, 3, 4, 5, 6, 1])
    root = tmp_path / "UCI HAR Dataset"
    write_har(root, "train", X, y)
    write_har(root, "test", X[:3], y[:3])
    return root, X, y


def test_uci_har_round_trips(har):
    root, X, y = har
    got_X, got_y = load_uci_har(str(root), "train")
    assert got_X.dtype == np.float32 and got_X.shape == (7, 561)
    np.testing.assert_allclose(got_X, X, rtol=1e-6)
    assert got_y.tolist() == (y - 1).tolist() and len(UCI_HAR_CLASSES) == 6
    assert load_uci_har(str(root), "test")[0].shape == (3, 561)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "train" / "y_train.txt").unlink(), "y_train.txt: no such file"),
    (lambda r: (r / "train" / "y_train.txt").write_text("1\n2\n"), "2 labels for the 7 rows"),
    (lambda r: (r / "train" / "y_train.txt").write_text("0\n" * 7), "numbered 1..6"),
    (lambda r: (r / "train" / "y_train.txt").write_text("7\n" * 7), "below 6"),
    (lambda r: (r / "train" / "X_train.txt").write_text(" 1.0 2.0\n"), "line 1: 2 columns, expected 561"),
    (lambda r: (r / "train" / "X_train.txt").write_text(" 1.0 abc\n"), "line 1: not a number"),
    (lambda r: (r / "train" / "X_train.txt").write_text(" nan" * 561 + "\n"), "line 1: a value is NaN"),
    (lambda r: (r / "train" / "X_train.txt").write_text("\n"), "no data rows"),
])
def test_uci_har_errors_name_the_file(har, damage, message):
    root = har[0]
    damage(root)
    with pytest.raises(DataError, match=message) as err:
        load_uci_har(str(root), "train")
    assert str(root / "train") in str(err.value)


def test_uci_har_missing_folder_and_bad_part(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such folder"):
        load_uci_har(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="part must be"):
        load_uci_har(str(tmp_path), "valid")


def test_features_from_csv_and_npz(tmp_path):
    X = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -3.25]], np.float32)
    y = np.array([2, 0])
    csv = tmp_path / "f.csv"
    csv.write_text("a,b,c,label\n" + "".join("%s,%d\n" % (",".join(map(str, r)), l) for r, l in zip(X, y)))
    npz = tmp_path / "f.npz"
    np.savez(npz, X=X, y=y)
    for path in (csv, npz):
        got_X, got_y, classes = load_features(str(path))
        np.testing.assert_array_equal(got_X, X)
        assert got_y.tolist() == y.tolist() and got_y.dtype == np.int64 and classes is None


def test_class_names_from_the_file_or_given(tmp_path):
    csv = tmp_path / "f.csv"
    csv.write_text("class,a,b\nfan-off,1,2\nfan-on,3,4\nfan-off,5,6\n")  # the header names the label column
    X, y, classes = load_features(str(csv))
    assert X.tolist() == [[1, 2], [3, 4], [5, 6]] and y.tolist() == [0, 1, 0] and classes == ["fan-off", "fan-on"]
    X, y, classes = load_features(str(csv), classes=["fan-on", "fan-off"])  # another file's order
    assert y.tolist() == [1, 0, 1] and classes == ["fan-on", "fan-off"]
    with pytest.raises(DataError, match="f.csv: label\\(s\\) fan-off not among the classes fan-on, broken"):
        load_features(str(csv), classes=["fan-on", "broken"])
    npz = tmp_path / "f.npz"
    np.savez(npz, X=X, y=np.array([1, 0, 1]), classes=np.array(["low", "high"]))
    assert load_features(str(npz))[2] == ["low", "high"]
    with pytest.raises(DataError, match="f.npz: labels must be below 1"):
        load_features(str(npz), classes=["only"])


@pytest.mark.parametrize("name, content, message", [
    ("f.csv", "1,2,0\n1,2\n", "line 2: 2 columns, expected 3"),
    ("f.csv", "1,2,0\n1,x,1\n", "line 2, column 2: 'x' is not a number"),
    ("f.csv", "1,2,1.5\n", "labels must be non-negative integers"),
    ("f.csv", "1,2,-1\n", "labels must be non-negative integers"),
    ("f.csv", "1,inf,1\n", "line 1: a value is NaN or infinite"),
    ("f.csv", "", "no data rows"),
    ("f.csv", "3\n", "at least one feature column"),
    ("f.txt", "1,2,3\n", "unsupported file type '.txt'"),
    ("f.npz", dict(X=np.zeros((2, 3))), "no array 'y'"),
    ("f.npz", dict(X=np.zeros(3), y=np.zeros(3)), "X must be 2-D"),
    ("f.npz", dict(X=np.zeros((2, 3)), y=np.zeros(3)), "2 rows in X but 3 labels"),
    ("f.npz", b"not a zip", "not a readable .npz"),
])
def test_feature_file_errors_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        load_features(str(path))
    assert str(path) in str(err.value)


def test_missing_feature_file(tmp_path):
    for name in ("gone.csv", "gone.npz"):
        with pytest.raises(DataError, match="gone.* no such file"):
            load_features(str(tmp_path / name))
