"""Sample and skip-cache storage: exact float rows, compact int8 rows, and rows spilled to flash."""
import json

SCRIPT = """
import json
from s2l.rowstore import RowStore, BLOCK_ROWS
rows = [[[(r * 7 + k * 3) % 11 - 5.25 for k in range(5)], [r - 0.5, 2.0 ** -r, 0.0]] for r in range(40)]
out = {}
for enc in ("float", "compact"):
    ram = RowStore([5, 3], enc)
    spill = RowStore([5, 3], enc, ram_budget=BLOCK_ROWS * ram.row_bytes, spill_path="spill-" + enc)
    for r in rows:
        ram.append(r)
        spill.append(r)
    got = [[list(v) for v in ram.get(i)] for i in range(len(rows))]
    same = all([list(v) for v in spill.get(i)] == got[i] for i in reversed(range(len(rows))))
    out[enc] = {"got": got, "spill_same": same, "row_bytes": ram.row_bytes,
                "ram_bytes": [ram.ram_bytes, spill.ram_bytes], "spilled": [ram.spilled_bytes, spill.spilled_bytes]}
    spill.close()
try:
    RowStore([5, 3], "float", ram_budget=100).reserve(BLOCK_ROWS + 1)
except MemoryError as e:
    out["no_spill"] = str(e)
print(json.dumps(out))
"""


def test_rows_round_trip_in_ram_and_spilled_to_flash(run):
    out = json.loads(run(SCRIPT))
    rows = [[[(r * 7 + k * 3) % 11 - 5.25 for k in range(5)], [r - 0.5, 2.0 ** -r, 0.0]] for r in range(40)]
    assert out["float"]["got"] == rows  # all these values are exact in float32
    for got, want in zip(out["compact"]["got"], rows):
        for g, w in zip(got, want):
            step = max(map(abs, w)) / 127
            assert all(abs(a - b) <= step / 2 + 1e-6 for a, b in zip(g, w))
    for enc, width in (("float", 4 * 8), ("compact", 8 + 4 * 2)):
        assert out[enc]["row_bytes"] == width
        assert out[enc]["spill_same"]
        assert out[enc]["ram_bytes"] == [48 * width, 16 * width]  # 40 rows: 3 blocks of 16 / 1 block
        assert out[enc]["spilled"] == [0, 24 * width]
    assert "no spill file" in out["no_spill"]
