"""Quantization of surviving weights and a lossless compressed model file.

Per kernel (every variable with two or more axes), the nonzero weights are
quantized to a codebook of at most 2**bits values (`"kmeans"`: Lloyd's
algorithm from quantile starts, or `"uniform"`), zeros stay exact: their
positions are stored, not their values. `search_bits` finds the fewest bits
per layer whose quantization keeps KL(original || quantized) on calibration
inputs within a budget, then checks all layers together (our design; the
Directed Evolution paper's abstract names this step without details).

File format (`.tfsz`), ours:

    magic b"TFSPZ" | version (uint16) | header length (uint32) | header | payload | SHA-256

The header is LZMA-compressed JSON: the Keras model config and, per
variable, its shape, codebook and stream lengths. The payload holds, per
kernel, the positions of its nonzeros as gaps between flat indices (LEB128
varints) and the codebook index of each nonzero (one byte), both
LZMA-compressed (LZMA's range coder is the entropy coder), and every other
variable (biases, BatchNorm) as raw float32. The SHA-256 of everything
before it detects truncation and corruption. The compression ratio counts
every byte of the file: 32 x parameters / (8 x file size).
"""

import hashlib
import io
import json
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tfsparse._utils import write_atomically
from tfsparse.divergence import kl_divergence
from tfsparse.surgery import all_layers, is_pruned, strip

MAGIC = b"TFSPZ"
VERSION = 1
METHODS = ("kmeans", "uniform")


def quantize(values, bits, method="kmeans"):
    """Codebook (float32, at most 2**bits entries) and uint8 indices for `values` (1-D)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"`bits` must be in [1, 8]. Received: bits={bits}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    values = np.asarray(values, dtype=np.float32).ravel()
    if values.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.uint8)
    distinct = np.unique(values)
    if distinct.size <= 2 ** bits:
        return distinct, np.searchsorted(distinct, values).astype(np.uint8)
    levels = 2 ** bits
    if method == "uniform":
        codebook = np.linspace(values.min(), values.max(), levels, dtype=np.float64)
    else:
        codebook = np.quantile(values, (np.arange(levels) + 0.5) / levels)
        for _ in range(30):  # Lloyd's iterations in 1-D: assign to the nearest, move to the mean
            assignment = _nearest(codebook, values)
            sums = np.bincount(assignment, weights=values, minlength=levels)
            counts = np.bincount(assignment, minlength=levels)
            updated = np.where(counts > 0, sums / np.maximum(counts, 1), codebook)
            if np.allclose(updated, codebook):
                break
            codebook = np.sort(updated)
    codebook = codebook.astype(np.float32)
    return codebook, _nearest(codebook, values).astype(np.uint8)


def _nearest(codebook, values):
    """Index of the nearest codebook entry (codebook sorted)."""
    right = np.clip(np.searchsorted(codebook, values), 1, len(codebook) - 1)
    left = right - 1
    return np.where(np.abs(values - codebook[left]) <= np.abs(values - codebook[right]), left, right)


def quantized_model(model, bits, method="kmeans"):
    """A plain copy of `model` whose kernels are quantized (zeros kept exact).

    `bits`: one int for every kernel, or a dict "<layer>/<variable>" -> bits;
    32 leaves a kernel in float32.
    """
    plain = _plain_copy(model)
    for key, variable in _kernels(plain):
        if _bits_for(bits, key) >= 32:
            continue
        value = keras.ops.convert_to_numpy(variable)
        nonzero = value != 0
        codebook, indices = quantize(value[nonzero], _bits_for(bits, key), method)
        result = np.zeros_like(value)
        result[nonzero] = codebook[indices]
        variable.assign(result)
    return plain


def search_bits(model, calibration_data, divergence_budget=0.01, method="kmeans", candidates=range(8, 1, -1)):
    """Fewest bits per kernel within `divergence_budget`, then a joint check.

    For each kernel alone, the smallest number of bits (from `candidates`)
    whose quantization keeps KL(original || quantized) on
    `calibration_data` at most the budget. If all layers together exceed it,
    the layer whose extra bit lowers the divergence most gets one, until the
    budget holds (or every layer is at the largest candidate).

    Returns:
        (bits: dict "<layer>/<variable>" -> bits, divergence of the joint model).
    """
    plain = _plain_copy(model)
    reference = keras.ops.convert_to_numpy(plain(calibration_data, training=False))
    candidates = sorted(candidates, reverse=True)
    paths = [key for key, _ in _kernels(plain)]

    def divergence(bits):
        quantized = quantized_model(plain, bits, method)
        return float(keras.ops.convert_to_numpy(kl_divergence(reference, quantized(calibration_data, training=False))))

    chosen = {}
    for path in paths:
        chosen[path] = candidates[0]
        for bits in candidates:
            trial = {p: 32 for p in paths} | {path: bits}
            if divergence(trial) > divergence_budget:
                break
            chosen[path] = bits
    joint = divergence(chosen)
    while joint > divergence_budget:
        raisable = [p for p in paths if chosen[p] < candidates[0]]
        if not raisable:
            break
        trials = {p: divergence(chosen | {p: chosen[p] + 1}) for p in raisable}
        best = min(trials, key=trials.get)
        chosen[best] += 1
        joint = trials[best]
    return chosen, joint


@dataclass
class CompressionReport:
    """Where the bytes of a compressed file go."""

    path: Path
    parameters: int
    file_bytes: int
    position_bytes: int
    value_bytes: int
    codebook_bytes: int
    raw_bytes: int
    header_bytes: int
    bits: dict

    @property
    def ratio(self):
        """32 x parameters / total bits of the file."""
        return 32 * self.parameters / (8 * self.file_bytes)

    def __str__(self):
        return (f"wrote {self.path}: {self.file_bytes:,} bytes for {self.parameters:,} parameters, "
                f"{self.ratio:.1f}x smaller than float32 (everything counted: positions "
                f"{self.position_bytes:,} B, values {self.value_bytes:,} B, codebooks {self.codebook_bytes:,} B, "
                f"unquantized variables {self.raw_bytes:,} B, header {self.header_bytes:,} B); "
                f"bits per layer {self.bits}")


def compress(model, path, bits=4, method="kmeans"):
    """Quantizes `model`'s kernels and writes the compressed file atomically.

    Args:
        model: a masked or plain Keras model (it is stripped first).
        path: the file to write (its directory must exist).
        bits: one int for every kernel, or a dict "<layer>/<variable>" ->
            bits (e.g. from `search_bits`).
        method: `"kmeans"` or `"uniform"` codebooks.

    Returns:
        A `CompressionReport`. `decompress(path)` gives back exactly
        `quantized_model(model, bits, method)`.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The directory of `path` does not exist: {path.parent}. Received: path={path}")
    plain = _plain_copy(model)
    kernels = {id(v) for _, v in _kernels(plain)}
    entries, streams = [], []
    sizes = dict(position_bytes=0, value_bytes=0, codebook_bytes=0, raw_bytes=0)
    for key, variable in _named_variables(plain):
        value = keras.ops.convert_to_numpy(variable).astype(np.float32)
        entry = {"name": key, "shape": list(value.shape)}
        if id(variable) in kernels:
            flat = value.ravel()
            positions = np.flatnonzero(flat)
            layer_bits = _bits_for(bits, key)
            codebook, indices = quantize(flat[positions], layer_bits, method)
            gaps = lzma.compress(_varints(np.diff(positions, prepend=-1) - 1))
            values = lzma.compress(indices.tobytes())
            entry.update(kind="quantized", bits=layer_bits, nonzero=int(positions.size),
                         codebook=codebook.tolist(), gaps=len(gaps), values=len(values))
            streams += [gaps, values]
            sizes["position_bytes"] += len(gaps)
            sizes["value_bytes"] += len(values)
            sizes["codebook_bytes"] += 4 * codebook.size
        else:
            raw = value.tobytes()
            entry.update(kind="raw", bytes=len(raw))
            streams.append(raw)
            sizes["raw_bytes"] += len(raw)
        entries.append(entry)
    header = lzma.compress(json.dumps({"model": plain.to_json(), "variables": entries}).encode())
    body = MAGIC + struct.pack("<HI", VERSION, len(header)) + header + b"".join(streams)
    content = body + hashlib.sha256(body).digest()
    write_atomically(path, content)
    parameters = sum(int(np.prod(v.shape)) for _, v in _named_variables(plain))
    return CompressionReport(path=path, parameters=parameters, file_bytes=len(content),
                             header_bytes=len(header) + len(MAGIC) + 6 + 32,
                             bits={e["name"]: e["bits"] for e in entries if e["kind"] == "quantized"}, **sizes)


def decompress(path):
    """Reads a file written by `compress` and returns the Keras model."""
    path = Path(path)
    content = path.read_bytes()
    if len(content) < len(MAGIC) + 6 + 32 or not content.startswith(MAGIC):
        raise ValueError(f"{path} is not a tfsparse compressed model (no {MAGIC!r} header).")
    version, header_length = struct.unpack_from("<HI", content, len(MAGIC))
    if version > VERSION:
        raise ValueError(
            f"{path} uses compressed format version {version}; this tfsparse reads up to version "
            f"{VERSION}. Upgrade tfsparse."
        )
    body, digest = content[:-32], content[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError(f"{path} is corrupted or truncated (checksum mismatch); refusing to load it.")
    stream = io.BytesIO(body[len(MAGIC) + 6:])
    header = json.loads(lzma.decompress(stream.read(header_length)))
    model = keras.models.model_from_json(header["model"])
    variables = dict(_named_variables(model))
    for entry in header["variables"]:
        shape = tuple(entry["shape"])
        if entry["kind"] == "raw":
            value = np.frombuffer(stream.read(entry["bytes"]), dtype=np.float32).reshape(shape)
        else:
            gaps = _from_varints(lzma.decompress(stream.read(entry["gaps"])))
            indices = np.frombuffer(lzma.decompress(stream.read(entry["values"])), dtype=np.uint8)
            positions = np.cumsum(gaps + 1) - 1
            flat = np.zeros(int(np.prod(shape)), np.float32)
            flat[positions] = np.asarray(entry["codebook"], np.float32)[indices]
            value = flat.reshape(shape)
        variables[entry["name"]].assign(value)
    return model


def _plain_copy(model):
    if is_pruned(model):
        return strip(model)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _named_variables(model):
    """("<layer name>/<variable name>", variable) for every variable, each once."""
    named, seen = [], set()
    for layer in all_layers(model):
        if isinstance(layer, keras.Model):
            continue
        for variable in layer.weights:
            if id(variable) not in seen:
                seen.add(id(variable))
                named.append((f"{layer.name}/{variable.name}", variable))
    return named


def _kernels(model):
    """(name, variable) of the kernels: variables with two or more axes."""
    return [(key, v) for key, v in _named_variables(model) if len(v.shape) >= 2]


def _bits_for(bits, path):
    value = bits.get(path) if isinstance(bits, dict) else bits
    if value is None:
        raise ValueError(f"`bits` gives no value for '{path}'. Received: bits={bits}")
    return int(value)


def _varints(values):
    """LEB128 encoding of non-negative integers."""
    out = bytearray()
    for value in np.asarray(values, dtype=np.int64).tolist():
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


def _from_varints(data):
    values, current, shift = [], 0, 0
    for byte in data:
        current |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
        else:
            values.append(current)
            current, shift = 0, 0
    return np.asarray(values, dtype=np.int64)
