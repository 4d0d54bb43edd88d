# Kiln predict.py worker: loads the model directory's predict.py and answers one JSON line per request.
# Protocol (one JSON object per line): startup {"ready": true, "signature": ...} or {"ready": false, "error": ...};
# then request {"id", "inputs": {name: {"datatype", "shape", "data"}}} -> {"id", "outputs": {...}} or {"id", "error"}.
import importlib.util
import inspect
import json
import os
import sys
import traceback

model_dir = sys.argv[1]
# The protocol owns the real stdout; anything the model prints goes to stderr (the server's log).
proto_out = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

try:
    import numpy as np
except ImportError:  # models without numpy get nested lists
    np = None

NP_TYPES = {"BOOL": "bool", "INT32": "int32", "INT64": "int64", "FP32": "float32", "FP64": "float64", "BYTES": "object"}


def send(obj):
    proto_out.write(json.dumps(obj, allow_nan=False) + "\n")
    proto_out.flush()


def to_input(t):
    if np is None:
        return t["data"]
    return np.asarray(t["data"], dtype=NP_TYPES.get(t["datatype"], "float64")).reshape(t["shape"])


def to_output(value):
    if np is None:
        return {"value": value}
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind == "b":
        dtype = "BOOL"
    elif kind in "iu":
        dtype = "INT64"
    elif kind == "f":
        dtype = "FP32" if arr.dtype == np.float32 else "FP64"
    else:
        dtype = "BYTES"
        arr = arr.astype(str)
    data = arr.reshape(-1).tolist()
    if kind == "f":
        data = [None if x != x else x for x in data]
    return {"datatype": dtype, "shape": list(arr.shape), "data": data}


try:
    sys.path.insert(0, model_dir)
    spec = importlib.util.spec_from_file_location("predict", os.path.join(model_dir, "predict.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "predict", None)):
        raise RuntimeError("predict.py defines no `predict(inputs)` function")
    state = module.load(model_dir) if callable(getattr(module, "load", None)) else None
    takes_state = len(inspect.signature(module.predict).parameters) >= 2
except BaseException:
    send({"ready": False, "error": traceback.format_exc(limit=5)})
    sys.exit(1)

send({"ready": True, "signature": getattr(module, "SIGNATURE", None)})

for line in sys.stdin:
    request = json.loads(line)
    try:
        inputs = {name: to_input(t) for name, t in request["inputs"].items()}
        result = module.predict(inputs, state) if takes_state else module.predict(inputs)
        if not isinstance(result, dict):
            result = {"predictions": result}
        send({"id": request["id"], "outputs": {name: to_output(v) for name, v in result.items()}})
    except Exception:
        send({"id": request["id"], "error": traceback.format_exc(limit=3)})
