"""Which .tflite file to write: the smallest, the fastest on this machine, or both.

Sparse encoding makes a file smaller but not always faster: LiteRT has sparse
compute kernels only for FULLY_CONNECTED (1x4 float, 1x16 int8 blocks), and
its XNNPACK delegate refuses sparse int8 weights, so a sparse int8 file runs
on the builtin kernels and is slower than the dense int8 file under XNNPACK
(benchmarks/results/block_sparsity.md). Other sparse weights are densified at
load time (size, not speed). Rather than guess, `to_tflite(..., policy=...)`
converts the model both ways (same quantization), verifies both, times every
interpreter configuration that computes the model (batch 1, median of
invokes) and writes the file the policy asks for, with the comparison in
its report.
"""

import dataclasses
import tempfile
from pathlib import Path

from tfsparse import latency
from tfsparse._utils import text_table, write_atomically

POLICIES = ("smallest", "fastest", "both")


def check_policy(policy, sparse):
    if policy not in POLICIES:
        raise ValueError(f"`policy` must be one of {POLICIES} or None. Received: policy={policy!r}")
    if sparse is not True:
        raise ValueError(
            "`policy` chooses between the sparse and the dense encoding itself; leave `sparse` unset. "
            f"Received: sparse={sparse!r}, policy={policy!r}"
        )


def fastest_path(path):
    """Where `policy="both"` writes the fastest file when it is not the smallest."""
    path = Path(path)
    return path.with_name(f"{path.stem}.fastest{path.suffix}")


def write_by_policy(to_tflite, model, path, policy, threads=1, rounds=3, invokes=100, warmup=20, **options):
    """Converts `model` sparse and dense with `to_tflite(**options)`, times
    both and writes what `policy` asks for; returns the `ExportReport` of the
    file at `path` with `policy`, `candidates` and `choice` filled in.

    A candidate that cannot be written (the converter dropped a partial
    block, say) is listed with the reason; only when neither can, the first
    error is raised.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        reports, failures = {}, {}
        for encoding in ("sparse", "dense"):
            try:
                reports[encoding] = to_tflite(model, Path(tmp) / f"{encoding}.tflite",
                                              sparse=encoding == "sparse", **options)
            except (ValueError, RuntimeError) as error:
                failures[encoding] = error
        if not reports:
            raise failures["sparse"]
        contents = {encoding: report.path.read_bytes() for encoding, report in reports.items()}
        timings = latency.compare(contents, configs=[(runtime, threads) for runtime in latency.RUNTIMES],
                                  rounds=rounds, invokes=invokes, warmup=warmup)
        candidates = [
            _candidate(encoding, report, runtime, timings[encoding][f"{runtime}/{threads}"])
            for encoding, report in reports.items() for runtime in latency.RUNTIMES
        ]
        candidates += [{"encoding": encoding, "size_bytes": None, "runtime": None, "median_ms": None,
                        "why_not": _first_line(error)} for encoding, error in failures.items()]
        runnable = [c for c in candidates if c["why_not"] is None]
        if not runnable:
            raise RuntimeError("Neither file runs correctly in any LiteRT configuration; nothing was written. "
                               + "; ".join(f"{c['encoding']} {c['runtime']}: {c['why_not']}" for c in candidates))
        smallest = min(runnable, key=lambda c: (c["size_bytes"], c["median_ms"]))
        fastest = min(runnable, key=lambda c: (c["median_ms"], c["size_bytes"]))
        chosen = fastest if policy == "fastest" else smallest
        report = _chosen_report(reports, chosen, contents, path, policy, candidates, threads)
        if policy == "both" and fastest["encoding"] != smallest["encoding"]:
            also = fastest_path(path)
            write_atomically(also, contents[fastest["encoding"]])
            report = dataclasses.replace(report, also_wrote=also, choice=report.choice + (
                f"; the fastest file ({fastest['encoding']} encoding, {fastest['median_ms']:.4g} ms with "
                f"{fastest['runtime']}) is {also}"))
        write_atomically(path, contents[chosen["encoding"]])
    return report


def _candidate(encoding, report, runtime, timing):
    """One (file, runtime) row: its size and latency, or why it does not count."""
    errors = dict(report.attempts)
    why_not = errors.get(latency.RUNTIME_NAMES[runtime])
    if why_not is None and not timing["ok"]:
        why_not = timing["error"]
    return {"encoding": encoding, "size_bytes": report.size_bytes, "runtime": runtime,
            "median_ms": timing["median_ms"] if why_not is None else None, "why_not": why_not}


def _chosen_report(reports, chosen, contents, path, policy, candidates, threads):
    base = reports[chosen["encoding"]]
    reason = {
        "fastest": f"the fastest file: {chosen['median_ms']:.4g} ms per batch-1 invoke with {chosen['runtime']}, "
                   f"{threads} thread(s)",
        "smallest": f"the smallest file: {chosen['size_bytes']:,} bytes",
        "both": f"the smallest file: {chosen['size_bytes']:,} bytes",
    }[policy]
    others = [c for c in candidates if c["encoding"] != chosen["encoding"] and c["why_not"] is None]
    if policy != "fastest" and not others:
        reason += " (the only one that runs)"
    return dataclasses.replace(
        base, path=path, sparse=chosen["encoding"] == "sparse", runtime=latency.RUNTIME_NAMES[chosen["runtime"]],
        interpreter_options=dict(latency.RUNTIMES[chosen["runtime"]]), policy=policy, candidates=candidates,
        choice=f"{chosen['encoding']} encoding, {reason}",
    )


def candidates_table(candidates):
    """The comparison `to_tflite(..., policy=...)` made, as text."""
    rows = [[c["encoding"], "-" if c["size_bytes"] is None else f"{c['size_bytes']:,}", c["runtime"] or "-",
             "-" if c["median_ms"] is None else f"{c['median_ms']:.4g}", c["why_not"] or ""] for c in candidates]
    return text_table(["encoding", "bytes", "runtime", "median ms", "not counted because"], rows, left=(0, 2, 4))


def _first_line(error):
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
