#!/usr/bin/env bash
# distml's safetensors files open in Python: a 10-line numpy reader loads a saved MLP and gets
# exactly the parameters distml printed; the `safetensors` package is used too when installed
# (it is not packaged in Debian 12). The other way round, a file written by a numpy writer (tensors
# listed out of offset order, as other writers do) loads as a distml model with the right values.
# Needs /usr/bin/python3 with numpy (Debian's python3-numpy).
set -euo pipefail
BUILD=${DISTML_BUILD:?DISTML_BUILD must point at the build directory}
TOOL="$BUILD/safetensors_test"
PY=/usr/bin/python3
if [ ! -x "$TOOL" ]; then echo "FAIL: $TOOL not built"; exit 1; fi
if ! "$PY" -c "import numpy" 2>/dev/null; then echo "FAIL: $PY has no numpy (apt-get install python3-numpy)"; exit 1; fi
DIR=$(mktemp -d /tmp/distml_st_py_XXXXXX)
trap 'rm -rf "$DIR"' EXIT

"$TOOL" --write-sample "$DIR"

"$PY" - "$DIR" <<'EOF'
import json, struct, sys
import numpy as np
d = sys.argv[1]

def read_safetensors(path):  # the 10-line numpy reader
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype="<f4").reshape(v["shape"])
               for k, v in header.items()}
    return tensors, meta, header, n

t, meta, header, n = read_safetensors(d + "/model.safetensors")
assert n % 8 == 0, n
assert all(v["dtype"] == "F32" for v in header.values())
assert meta["distml.model"] == "mlp" and meta["distml.in_dim"] == "784", meta
assert meta["distml.num_classes"] == "10" and meta["distml.hidden"] == "16", meta
assert meta["train.epoch"] == "2", meta
assert t["fc1.weight"].shape == (16, 784) and t["fc1.bias"].shape == (16,), t["fc1.weight"].shape
assert t["fc2.weight"].shape == (10, 16) and t["fc2.bias"].shape == (10,)
order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
assert order == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], order
flat = np.concatenate([t[k].ravel() for k in order])
want = np.loadtxt(d + "/model.txt", dtype=np.float64).astype(np.float32)
assert flat.shape == want.shape, (flat.shape, want.shape)
assert np.array_equal(flat, want), "parameters differ"
assert np.abs(t["fc1.weight"]).max() <= np.sqrt(6 / 784) and np.all(t["fc1.bias"] == 0)
try:
    from safetensors.numpy import load_file
    s = load_file(d + "/model.safetensors")
    assert all(np.array_equal(s[k], t[k]) for k in t)
    print("safetensors package: ok")
except ImportError:
    print("safetensors package not installed: numpy reader only")

# numpy writer: a logreg model, header keys in reverse offset order.
rng = np.random.default_rng(5)
w = rng.standard_normal(50).astype("<f4"); b = np.array([0.25], dtype="<f4")
hdr = {"__metadata__": {"distml.model": "logreg", "distml.in_dim": "50", "distml.num_classes": "2"},
       "bias": {"dtype": "F32", "shape": [1], "data_offsets": [200, 204]},
       "weight": {"dtype": "F32", "shape": [50], "data_offsets": [0, 200]}}
hb = json.dumps(hdr).encode(); hb += b" " * (-len(hb) % 8)
with open(d + "/py.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(hb)) + hb + w.tobytes() + b.tobytes())
with open(d + "/py.expect", "w") as f:
    f.write("logreg 50 2 51 %.9g\n" % (float(w.astype(np.float64).sum()) + 0.25))
print("python side: ok")
EOF

got=$("$TOOL" --load "$DIR/py.safetensors")
want=$(cat "$DIR/py.expect")
read -r k1 d1 c1 n1 s1 <<<"$got"
read -r k2 d2 c2 n2 s2 <<<"$want"
if [ "$k1 $d1 $c1 $n1" != "$k2 $d2 $c2 $n2" ]; then echo "FAIL: loaded '$got', want '$want'"; exit 1; fi
"$PY" -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-5 * max(1, abs(b)) else 1)" "$s1" "$s2" \
  || { echo "FAIL: parameter sum $s1, want $s2"; exit 1; }

# A file Python truncated is refused with its name in the message.
head -c 100 "$DIR/model.safetensors" > "$DIR/cut.safetensors"
if out=$("$TOOL" --load "$DIR/cut.safetensors" 2>&1); then echo "FAIL: truncated file loaded"; exit 1; fi
case "$out" in *cut.safetensors*) ;; *) echo "FAIL: message does not name the file: $out"; exit 1 ;; esac
echo "test_safetensors_python: ok"
