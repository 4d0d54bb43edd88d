# Kiln python worker: loads a model folder (a `predict.py`, or an MLflow model with an `MLmodel` file) and
# answers one JSON line per request on its own stdout.
#
# Usage: python -c <this file> MODEL_DIR KIND   (KIND: `predict.py` or `mlflow`)
# Startup line: {"ready": true, "signature": {...} | null, "input": "arrays" | "dataframe" | "records"}
#            or {"ready": false, "error": ERROR}
# Requests:     {"id", "inputs": {name: {"datatype", "shape", "data"}}}          (input "arrays")
#               {"id", "columns": [[name, {"datatype", "data"}], ...]}           ("dataframe", "records")
# Answers:      {"id", "outputs": {name: {"datatype", "shape", "data"}}} or {"id", "error": ERROR}
# ERROR:        {"type": exception class, "message": str(exception), "traceback": formatted traceback}
import importlib.util
import inspect
import json
import os
import sys
import traceback

model_dir, kind = sys.argv[1], sys.argv[2]
# The protocol owns the real stdout; anything the model prints goes to stderr (the server's log).
proto_out = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

try:
    import numpy as np
except ImportError:  # models without numpy get nested lists
    np = None

INPUT_KINDS = ("arrays", "dataframe", "records")
NP_TYPES = {"BOOL": "bool", "INT32": "int32", "INT64": "int64", "FP32": "float32", "FP64": "float64", "BYTES": "object"}
# MLflow column types and tensor dtypes, as Open Inference Protocol datatypes.
MLFLOW_COLUMN_TYPES = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
                       "string": "BYTES"}
NUMPY_DTYPES = {"bool": "BOOL", "int32": "INT32", "int64": "INT64", "float32": "FP32", "float64": "FP64",
                "object": "BYTES", "str": "BYTES"}


def send(obj):
    proto_out.write(json.dumps(obj, allow_nan=False) + "\n")
    proto_out.flush()


def describe(error):
    return {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}


def to_array(t):
    if np is None:
        return t["data"]
    array = np.asarray(t["data"], dtype=NP_TYPES.get(t["datatype"], "float64"))
    return array.reshape(t["shape"]) if "shape" in t else array


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


def to_outputs(result, default_name):
    """Named outputs from whatever the model returned: a dict, a DataFrame (one output per column), a
    Series, a numpy array, a list (of values, or of records)."""
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(result, pd.DataFrame):
        return {str(c): to_output(result[c].to_numpy()) for c in result.columns}
    if pd is not None and isinstance(result, pd.Series):
        return {default_name: to_output(result.to_numpy())}
    if isinstance(result, dict):
        return {str(name): to_output(value) for name, value in result.items()}
    if isinstance(result, (list, tuple)) and result and all(isinstance(r, dict) for r in result):
        return {str(name): to_output([r.get(name) for r in result]) for name in result[0]}
    return {default_name: to_output(result)}


def to_table(columns, input_kind):
    if input_kind == "records":
        names = [name for name, _ in columns]
        return [dict(zip(names, row)) for row in zip(*(c["data"] for _, c in columns))]
    import pandas as pd
    return pd.DataFrame({name: to_array(c) for name, c in columns})


def load_predict_py():
    """`predict(inputs[, state])`, optional `load(model_dir)`, `SIGNATURE` and `INPUT` from predict.py."""
    sys.path.insert(0, model_dir)
    spec = importlib.util.spec_from_file_location("predict", os.path.join(model_dir, "predict.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "predict", None)):
        raise RuntimeError("predict.py defines no `predict(inputs)` function")
    input_kind = getattr(module, "INPUT", "arrays")
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"predict.py sets INPUT = {input_kind!r}; expected one of {', '.join(map(repr, INPUT_KINDS))}")
    if input_kind == "dataframe":
        import pandas  # noqa: F401  (fail at load, not on the first request)
    state = module.load(model_dir) if callable(getattr(module, "load", None)) else None
    if len(inspect.signature(module.predict).parameters) >= 2:
        def predict(inputs):
            return module.predict(inputs, state)
    else:
        predict = module.predict
    return predict, getattr(module, "SIGNATURE", None), input_kind


def mlflow_signature(signature):
    """An MLflow model signature (column- or tensor-based) as a Kiln SIGNATURE."""
    if signature is None:
        return None, "dataframe"
    inputs, input_kind = [], "dataframe"
    for i, spec in enumerate(signature.inputs.inputs):
        if signature.inputs.is_tensor_spec():
            input_kind = "arrays"
            dtype = NUMPY_DTYPES.get(str(spec.type))
            shape = list(spec.shape)
        else:
            dtype = MLFLOW_COLUMN_TYPES.get(getattr(spec.type, "name", str(spec.type)))
            shape = [-1]
        if dtype is None:
            raise TypeError(f"input `{spec.name or i}` of the MLflow signature has type `{spec.type}`, which Kiln "
                            f"cannot serve (supported: {', '.join(MLFLOW_COLUMN_TYPES)} columns and "
                            f"{', '.join(NUMPY_DTYPES)} tensors)")
        inputs.append({"name": spec.name or ("input" if len(signature.inputs.inputs) == 1 else str(i)),
                       "datatype": dtype, "shape": shape})
    outputs = []
    if signature.outputs is not None:
        for i, spec in enumerate(signature.outputs.inputs):
            dtype = NUMPY_DTYPES.get(str(spec.type)) or MLFLOW_COLUMN_TYPES.get(getattr(spec.type, "name", ""))
            if dtype is None:
                continue
            shape = list(spec.shape) if signature.outputs.is_tensor_spec() else [-1]
            name = spec.name or ("predictions" if len(signature.outputs.inputs) == 1 else str(i))
            outputs.append({"name": name, "datatype": dtype, "shape": shape})
    return {"inputs": inputs, "outputs": outputs}, input_kind


def load_mlflow():
    """An MLflow model folder through `mlflow.pyfunc`, called with a pandas DataFrame."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.models import Model
    flavors = Model.load(model_dir).flavors
    if "python_function" not in flavors:
        raise ValueError(f"the MLmodel file has no `python_function` flavor (it has {', '.join(flavors)}); "
                         "Kiln serves MLflow models through mlflow.pyfunc")
    import mlflow.pyfunc
    model = mlflow.pyfunc.load_model(model_dir)
    signature, input_kind = mlflow_signature(model.metadata.signature)
    # A tensor signature with one unnamed input takes the bare array, as mlflow.pyfunc does.
    unnamed = signature is not None and input_kind == "arrays" and len(signature["inputs"]) == 1 \
        and not model.metadata.signature.inputs.has_input_names()

    def predict(inputs):
        if unnamed:
            inputs = next(iter(inputs.values()))
        return model.predict(inputs)
    return predict, signature, input_kind


try:
    predict, signature, input_kind = load_mlflow() if kind == "mlflow" else load_predict_py()
    declared = (signature or {}).get("outputs") or []
    default_output = declared[0]["name"] if len(declared) == 1 else "predictions"
except BaseException as error:  # noqa: BLE001  (SystemExit and import errors included: report, then exit)
    send({"ready": False, "error": describe(error)})
    sys.exit(1)

send({"ready": True, "signature": signature, "input": input_kind})

for line in sys.stdin:
    request = json.loads(line)
    try:
        if "columns" in request:
            inputs = to_table(request["columns"], input_kind)
        else:
            inputs = {name: to_array(t) for name, t in request["inputs"].items()}
        result = predict(inputs)
        send({"id": request["id"], "outputs": to_outputs(result, default_output)})
    except Exception as error:  # noqa: BLE001  (the model's own errors are the client's 500, logged)
        send({"id": request["id"], "error": describe(error)})
