"""Writing the files the commands make (models, JSON results, tables)."""
import os


def write_file(path, data, mode="w"):
    """data into the file at path, its folder made first when missing (out/..., a --json path)."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, mode) as f:
        f.write(data)
