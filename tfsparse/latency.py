"""Latency of .tflite files in LiteRT: batch 1, warm-up, median and IQR of many invokes.

Two runtimes:
- "xnnpack": the interpreter as LiteRT makes it by default (it applies its
  XNNPACK delegate to the ops XNNPACK takes);
- "builtin": `OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`, LiteRT's own
  kernels only (the only ones with sparse FULLY_CONNECTED code paths).

A configuration that does not run (XNNPACK refuses sparse int8
FULLY_CONNECTED weights on TF 2.21 / ai-edge-litert 2.3, say) comes back as
`{"ok": False, "error": ...}` and never raises, so one failing file does not
stop a comparison of many.

Only `interpreter.invoke()` is timed (time.perf_counter around it); the input
is set once before the warm-up. Timings on a shared machine are noisy:
`compare` interleaves configurations in rounds so that noise hits all of them
alike; read ratios to a baseline measured in the same run, not absolute
values across runs. `tfsparse.export.to_tflite(..., policy="fastest")` and
the benchmarks use this module.
"""

from time import perf_counter

import numpy as np

from tfsparse._utils import require

#: Interpreter keyword arguments per runtime (see `interpreter`).
RUNTIMES = {
    "xnnpack": {},
    "builtin": {"experimental_op_resolver_type": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"},
}
#: How reports name each runtime.
RUNTIME_NAMES = {
    "xnnpack": "default (XNNPACK delegate)",
    "builtin": "builtin kernels, no default delegates",
}


def interpreter(model, options=None, num_threads=None):
    """A LiteRT interpreter of a .tflite path or its bytes; `options` as in
    `RUNTIMES` (the op resolver type by name)."""
    litert = require("ai_edge_litert.interpreter", "litert", "Running .tflite files")
    kwargs = dict(options or {})
    if "experimental_op_resolver_type" in kwargs:
        kwargs["experimental_op_resolver_type"] = getattr(litert.OpResolverType, kwargs["experimental_op_resolver_type"])
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    return litert.Interpreter(**source, num_threads=num_threads, **kwargs)


#: The configurations `compare` measures by default: every runtime at 1 and 2 threads.
CONFIGS = tuple((runtime, threads) for runtime in RUNTIMES for threads in (1, 2))
#: Largest |output - builtin 1-thread output| relative to the largest |builtin output|
#: at which `compare` still calls a configuration's outputs right (int8 files
#: may round differently in XNNPACK by a quantum or two).
AGREEMENT_TOLERANCE = 0.05


class Runner:
    """An interpreter of one file in one configuration, with batch-1 inputs set.

    Raises (RuntimeError or ValueError, as LiteRT does) when the file does not
    load, allocate or invoke in this configuration; `measure` catches that.
    """

    def __init__(self, model, runtime="xnnpack", threads=1, seed=0):
        self.interpreter = interpreter(model, RUNTIMES[runtime], threads)
        rng = np.random.default_rng(seed)
        for detail in self.interpreter.get_input_details():
            shape = [1, *[size if size > 0 else 1 for size in detail["shape_signature"][1:]]]
            self.interpreter.resize_tensor_input(detail["index"], shape)
        self.interpreter.allocate_tensors()
        for detail in self.interpreter.get_input_details():
            self.interpreter.set_tensor(detail["index"], _example(rng, detail))
        self.interpreter.invoke()  # a configuration that fails, fails here

    def time_invokes(self, count):
        """Wall times (ms) of `count` invokes, each timed on its own."""
        invoke, clock = self.interpreter.invoke, perf_counter  # bound once: no lookups in the loop
        times = np.empty(count)
        for index in range(count):
            start = clock()
            invoke()
            times[index] = clock() - start
        return 1000 * times

    def delegate_nodes(self):
        """Delegate nodes in the execution plan (LiteRT lists them as
        "DELEGATE" ops after the model's own): 0 under "xnnpack" means that
        XNNPACK took no op and the file ran on builtin kernels. None when
        this LiteRT build does not expose its op list (a private method)."""
        try:
            return sum(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())
        except (AttributeError, KeyError):
            return None

    def outputs(self):
        """The outputs of the last invoke, dequantized, as one flat float array."""
        values = []
        for detail in self.interpreter.get_output_details():
            value = self.interpreter.get_tensor(detail["index"]).astype(np.float64)
            scale, zero = detail["quantization"]
            values.append((value - zero) * scale if scale else value)
        return np.concatenate([value.ravel() for value in values])


def _example(rng, detail):
    """Random input in [0, 1), quantized for an int8/uint8 input."""
    value = rng.random(detail["shape"])
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        value = np.clip(np.round(value / scale + zero) if scale else value, info.min, info.max)
    return value.astype(detail["dtype"])


def _check(configs):
    """Raises on a configuration that cannot exist (a typo is no failure to report)."""
    for runtime, threads in configs:
        if runtime not in RUNTIMES:
            raise ValueError(f"`runtime` must be one of {sorted(RUNTIMES)}. Received: runtime={runtime!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"`threads` must be a positive integer. Received: threads={threads!r}")


def summarize(times_ms):
    """Median, quartiles and IQR (ms) of per-invoke times."""
    q1, median, q3 = np.percentile(times_ms, [25, 50, 75])
    return {"ok": True, "median_ms": float(median), "q1_ms": float(q1), "q3_ms": float(q3),
            "iqr_ms": float(q3 - q1), "invokes": int(len(times_ms))}


def failure(runtime, threads, error):
    return {"ok": False, "runtime": runtime, "threads": threads,
            "error": f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}


def measure(model, runtime="xnnpack", threads=1, invokes=1000, warmup=100, seed=0):
    """Latency of one file in one configuration.

    Args:
        model: a .tflite path or its bytes.
        runtime: "xnnpack" (LiteRT's default delegate) or "builtin".
        threads: the interpreter's num_threads.
        invokes: timed invokes; the median and IQR are over exactly these.
        warmup: untimed invokes first (caches, thread pools, XNNPACK packing).
        seed: of the random batch-1 input.

    Returns:
        {"ok": True, "runtime", "threads", "median_ms", "q1_ms", "q3_ms",
        "iqr_ms", "invokes", "delegate_nodes" (see `Runner.delegate_nodes`),
        "times_ms"} or, when the configuration does not
        run, {"ok": False, "runtime", "threads", "error"}.
    """
    _check([(runtime, threads)])
    try:
        runner = Runner(model, runtime, threads, seed)
        runner.time_invokes(warmup)
        times = runner.time_invokes(invokes)
    except (RuntimeError, ValueError) as error:
        return failure(runtime, threads, error)
    return dict(summarize(times), runtime=runtime, threads=threads, delegate_nodes=runner.delegate_nodes(),
                times_ms=times.tolist())


def compare(models, configs=CONFIGS, rounds=5, invokes=300, warmup=100, seed=0):
    """Latency of several files in several configurations, side by side.

    Every (file, configuration) gets one interpreter, warmed up once; then
    `rounds` rounds each time `invokes` invokes of every pair in turn, so
    slow phases of a shared machine fall on all pairs alike. The summary is
    over the `rounds * invokes` pooled times; `round_medians_ms` shows the
    drift between rounds.

    Args:
        models: {name: .tflite path or bytes}.
        configs: (runtime, threads) pairs.

    Returns:
        {name: {"<runtime>/<threads>": result}}: results as `measure` gives
        them (without the raw times), plus "round_medians_ms" and
        "agrees": whether the outputs match the file's "builtin"/1 outputs
        (None when that configuration was not run or failed); a runtime
        that runs but computes something else is no latency to report.
    """
    _check(configs)
    runners, results = {}, {}
    for name, model in models.items():
        results[name] = {}
        for runtime, threads in configs:
            key = f"{runtime}/{threads}"
            try:
                runner = Runner(model, runtime, threads, seed)
                runner.time_invokes(warmup)
                runners[(name, key)] = runner
            except (RuntimeError, ValueError) as error:
                results[name][key] = failure(runtime, threads, error)
    times = {pair: [] for pair in runners}
    for _ in range(rounds):
        for pair, runner in runners.items():
            times[pair].append(runner.time_invokes(invokes))
    for (name, key), runner in runners.items():
        runtime, threads = key.split("/")
        results[name][key] = dict(summarize(np.concatenate(times[(name, key)])), runtime=runtime,
                                  threads=int(threads), delegate_nodes=runner.delegate_nodes(),
                                  round_medians_ms=[float(np.median(t)) for t in times[(name, key)]])
    for name in models:
        reference = runners.get((name, "builtin/1"))
        for key, result in results[name].items():
            if result["ok"]:
                result["agrees"] = None if reference is None else _agree(runners[(name, key)], reference)
        results[name] = {f"{r}/{t}": results[name][f"{r}/{t}"] for r, t in configs}
    return results


def _agree(runner, reference):
    expected, actual = reference.outputs(), runner.outputs()
    scale = float(np.max(np.abs(expected))) or 1.0
    return bool(np.max(np.abs(actual - expected)) <= AGREEMENT_TOLERANCE * scale)
