"""The user's Keras model file: load it safely, read its inputs, switch its precision, count its FLOPs.

A model file is user input. It is loaded with ``safe_mode=True``, so a ``Lambda`` layer holding Python
code is refused rather than run; every problem (missing, corrupt, not a Keras model, refused by
safe_mode, unknown custom layer) is :class:`~workloads.harness.BadInput` with one line naming the file.

Reduced precision on a LOADED float32 model: every saved layer carries its own dtype policy, so setting
Keras's global ``mixed_bfloat16`` policy before ``load_model`` changes nothing (measured:
``benchmarks/keras_precision.py``). What works is :func:`with_policy`: the model cloned layer by layer
from its config with the policy, and the float32 weights copied over.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

from workloads.harness import BadInput
from workloads.keras.inputs import InputSpec

SUFFIX = ".keras"


def check_path(path: str) -> Path:
    """The model file's path, if it is a Keras 3 ``.keras`` archive (looked at without TensorFlow).

    Raises:
        BadInput: None given, missing, not a file, or not a ``.keras`` zip archive.
    """
    if not path:
        raise BadInput("give the model file: --set model=PATH (a Keras 3 .keras file)")
    file = Path(path)
    if not file.exists():
        raise BadInput(f"{file}: model file not found")
    if not file.is_file():
        raise BadInput(f"{file}: not a file (give a Keras 3 .keras file)")
    if file.suffix != SUFFIX:
        raise BadInput(f"{file}: not a Keras 3 model file (expected a {SUFFIX} file; save the model with "
                       f"model.save('model{SUFFIX}'))")
    if not zipfile.is_zipfile(file):
        raise BadInput(f"{file}: corrupt or not a Keras model file (not a {SUFFIX} zip archive)")
    return file


def load(keras: Any, path: str, *, compile: bool) -> Any:
    """Load a Keras model file with ``safe_mode=True``.

    Raises:
        BadInput: See :func:`check_path`; or Keras cannot load it, refuses it under safe_mode, or it
            holds something other than a model with declared inputs.
    """
    file = check_path(path)
    try:
        model = keras.saving.load_model(file, compile=compile, safe_mode=True)
    except Exception as exc:  # any failure to load a user's file is bad input
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "Lambda" in text:
            raise BadInput(f"{file}: refused under safe_mode: it holds a Lambda layer or other Python code "
                           "that would run on load; rebuild the model without it") from None
        raise BadInput(f"{file}: corrupt or not a loadable Keras model ({type(exc).__name__}: "
                       f"{text[:200]})") from None
    if not isinstance(model, keras.Model):
        raise BadInput(f"{file}: holds a {type(model).__name__}, not a Keras model")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise BadInput(f"{file}: the model declares no inputs (a subclassed model?); save a functional or "
                       "Sequential model built on keras.Input")
    return model


def input_specs(keras: Any, model: Any) -> list[InputSpec]:
    """Every input of ``model`` in the order it takes them, with the Embedding bound of integer inputs."""
    if isinstance(input_structure(model), dict):
        named = list(model.input.items())
    else:
        named = [(tensor.name, tensor) for tensor in model.inputs]
    bounds = _embedding_bounds(keras, model)
    specs = []
    for name, tensor in named:
        dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
        specs.append(InputSpec(name=str(name), shape=tuple(tensor.shape[1:]), dtype=dtype,
                               high=bounds.get(id(tensor))))
    return specs


def input_structure(model: Any) -> Any:
    """How ``model`` takes its inputs (a tensor, a list or a dict); None for a Sequential model (one input)."""
    try:
        return model.input
    except (AttributeError, ValueError):  # a Sequential model is never "called" on its Input
        return None


def _embedding_bounds(keras: Any, model: Any) -> dict[int, int]:
    """``id(input tensor) -> input_dim`` for inputs an Embedding reads directly (the smallest, if several)."""
    graph = getattr(model, "_functional", None) or model
    bounds: dict[int, int] = {}
    inputs = {id(t) for t in model.inputs}
    for layer in getattr(graph, "layers", []):
        if not isinstance(layer, keras.layers.Embedding):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in node.input_tensors:
                if id(tensor) in inputs:
                    bounds[id(tensor)] = min(bounds.get(id(tensor), layer.input_dim), layer.input_dim)
    if not bounds and isinstance(model, keras.Sequential) and model.layers:
        first = model.layers[0]
        if isinstance(first, keras.layers.Embedding):
            bounds[id(model.inputs[0])] = first.input_dim
    return bounds


def with_policy(keras: Any, model: Any, policy: str) -> Any:
    """A copy of ``model`` whose layers run under the dtype ``policy``, with the same (float32) weights.

    Raises:
        BadInput: The model cannot be cloned from its config (a subclassed model or layer).
    """
    def clone_layer(layer: Any) -> Any:
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
        clone.set_weights(model.get_weights())
    except Exception as exc:  # a model that cannot be cloned cannot take this knob
        text = " ".join(str(exc).split())[:200]
        raise BadInput(f"precision={policy}: the model cannot be rebuilt layer by layer with that policy "
                       f"({type(exc).__name__}: {text}); use precision=float32") from None
    return clone


def cached_forward_flops(tf: Any, model: Any, arrays: list[Any], path: str, cache_dir: Path) -> float | None:
    """:func:`forward_flops`, remembered in ``cache_dir`` by the file's content and the input shapes.

    Counting traces the whole model again (seconds for a MobileNet on two cores), and the count does not
    depend on threads, environment or allocator, so a study counts once per batch size.
    """
    from autotune.files import atomic_write

    digest = hashlib.sha256(Path(path).read_bytes())
    digest.update(json.dumps([[list(a.shape), str(a.dtype)] for a in arrays]).encode())
    entry = cache_dir / "keras-flops" / f"{digest.hexdigest()}.json"
    try:
        return json.loads(entry.read_text())["flops"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    flops = forward_flops(tf, model, arrays)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(entry, json.dumps({"flops": flops}))
    except OSError:
        pass
    return flops


def forward_flops(tf: Any, model: Any, arrays: list[Any]) -> float | None:
    """Floating-point operations of one forward pass on ``arrays`` (TensorFlow's profiler), or None.

    The model's call is traced once into a graph with its weights frozen, and the profiler sums the
    registered FLOPs of its ops (convolutions and matrix products at 2 per multiply-add). Ops without a
    registered count (some einsums, custom kernels) count as 0, so the figure is a lower bound.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    single = len(arrays) == 1
    try:
        function = tf.function(lambda *xs: model(xs[0] if single else list(xs), training=False))
        concrete = function.get_concrete_function(*(tf.TensorSpec(a.shape, a.dtype) for a in arrays))
        frozen = convert_variables_to_constants_v2(concrete)
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        profile = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
    except Exception:  # a figure we cannot count is left out, never a failed trial
        return None
    return float(profile.total_float_ops) or None
