"""The `tfsparse` command: run, demo, inspect, methods."""

import argparse
import os
import sys
from pathlib import Path

DEMO_EPOCHS = 5
EXPORT_CHOICES = ("float32", "dynamic", "float16", "int8")

# TensorFlow's C++ start-up chatter (CUDA probing) is noise on a command line.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "offline", False):
        os.environ["TFSPARSE_OFFLINE"] = "1"
    from tfsparse._utils import MissingDependencyError

    try:
        return args.handler(args, parser) or 0
    # Errors about the user's input or installation; anything else (a
    # TypeError, say) is a bug and keeps its traceback.
    except (ValueError, FileExistsError, FileNotFoundError, IsADirectoryError, MissingDependencyError) as error:
        print(f"tfsparse: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfsparse: interrupted; nothing was written to the output directory.", file=sys.stderr)
        return 130


def build_parser():
    from tfsparse_app import datasets, recipes, zoo

    parser = argparse.ArgumentParser(prog="tfsparse", description="Pruning and sparse training for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train a zoo model with a method and write model + report",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--method", required=True, choices=["dense", *sorted(recipes.RECIPES)])
    run.add_argument("--model", default="lenet_300_100", choices=sorted(zoo.BUILDERS))
    run.add_argument("--dataset", default="fashion_mnist", choices=list(datasets.NAMES))
    run.add_argument("--sparsity", type=float, default=0.9, help="target sparsity in [0, 1)")
    run.add_argument("--epochs", type=int, default=10)
    run.add_argument("--batch-size", type=int, default=128)
    run.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    run.add_argument("--max-train", type=int, help="use only the first N training examples")
    run.add_argument("--max-test", type=int, help="use only the first N test examples")
    run.add_argument("--data-dir", help="directory with local data files (see tfsparse_app.datasets)")
    run.add_argument("--offline", action="store_true", help="never download data")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--export", choices=EXPORT_CHOICES,
                     help="also write model.tflite (sparse, with this quantization), verified in LiteRT")
    _add_method_options(run, recipes.RECIPES)
    run.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="the main job on offline data: dense vs 90%% pruned, a few minutes")
    demo.add_argument("--out", default="tfsparse-demo", help="output directory")
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    demo.set_defaults(handler=_demo)

    export = commands.add_parser("export", help="convert a .keras model to a verified sparse (and quantized) .tflite",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    export.add_argument("model", help="a .keras file (masked or stripped)")
    export.add_argument("--out", required=True, help="the .tflite file to write")
    export.add_argument("--quantization", choices=EXPORT_CHOICES, default="float32")
    export.add_argument("--data", choices=list(datasets.NAMES),
                        help="data set for int8 calibration and for verification (default: random inputs)")
    export.add_argument("--int8-io", action="store_true", help="int8 inputs and outputs (with --quantization int8)")
    export.add_argument("--dense", action="store_true", help="no sparse weight encoding")
    export.add_argument("--per-tensor", action="store_true",
                        help="one int8 scale per kernel instead of per output channel (with --quantization int8 or "
                             "dynamic): a smaller file, possibly less accurate; a quantization-aware model keeps "
                             "its own choice")
    export.add_argument("--policy", choices=("smallest", "fastest", "both"),
                        help="convert sparse and dense, time both in LiteRT (batch 1) and write the smallest file, "
                             "the fastest, or both (the fastest as OUT's name + .fastest.tflite); prints the comparison")
    export.add_argument("--data-dir", help="directory with local data files (see tfsparse_app.datasets)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export.set_defaults(handler=_export)

    compress = commands.add_parser("compress", help="quantize and losslessly encode a .keras model into a .tfsz file",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    compress.add_argument("model", help="a .keras file (masked or stripped)")
    compress.add_argument("--out", required=True, help="the .tfsz file to write")
    compress.add_argument("--bits", type=int, help="bits for every layer (default: searched with --data)")
    compress.add_argument("--data", choices=list(datasets.NAMES), help="calibration data for the bit search")
    compress.add_argument("--budget", type=float, default=0.01, help="KL budget of the bit search")
    compress.add_argument("--data-dir", help="directory with local data files (see tfsparse_app.datasets)")
    compress.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    compress.set_defaults(handler=_compress)

    decompress = commands.add_parser("decompress", help="turn a .tfsz file back into a .keras model")
    decompress.add_argument("file", help="a .tfsz file")
    decompress.add_argument("--out", required=True, help="the .keras file to write")
    decompress.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    decompress.set_defaults(handler=_decompress)

    inspect = commands.add_parser("inspect", help="per-layer table of a .keras file, per-tensor table of a .tflite file")
    inspect.add_argument("file")
    inspect.set_defaults(handler=_inspect)

    listing = commands.add_parser("methods", help="list the methods with their papers")
    listing.set_defaults(handler=_methods)
    return parser


def _add_method_options(parser, recipes):
    """One flag per option name; its help says which methods use it."""
    users = {}
    for name, recipe in sorted(recipes.items()):
        for option, spec in recipe.options.items():
            users.setdefault(option, (spec, {}))[1][name] = spec.get("default")
    group = parser.add_argument_group("method options (only for the methods named in each help)")
    for option, (spec, defaults) in users.items():
        spec = {k: v for k, v in spec.items() if k != "default"}
        if len(set(map(repr, defaults.values()))) == 1:
            used_by = f"{', '.join(defaults)}; default {next(iter(defaults.values()))}"
        else:
            used_by = "; ".join(f"{name}: default {default}" for name, default in defaults.items())
        help_text = f"{spec.pop('help', '')} [{used_by}]"
        group.add_argument("--" + option.replace("_", "-"), default=argparse.SUPPRESS, help=help_text, **spec)


def _run(args, parser):
    from tfsparse_app import recipes, runner

    known = set() if args.method == runner.DENSE else set(recipes.get(args.method).options)
    options = {}
    for option in dict.fromkeys(option for recipe in recipes.RECIPES.values() for option in recipe.options):
        if hasattr(args, option):
            if option not in known:
                parser.error(f"--{option.replace('_', '-')} is not an option of --method {args.method}")
            options[option] = getattr(args, option)
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity must be in [0, 1). Received: {args.sparsity}")
    result = runner.run_job(
        args.method, args.model, args.dataset, args.sparsity, args.epochs, args.out,
        batch_size=args.batch_size, learning_rate=args.lr, method_options=options, seed=args.seed,
        max_train=args.max_train, max_test=args.max_test, overwrite=args.overwrite,
        data_dir=args.data_dir, verbose=0 if args.quiet else 1,
        export=False if args.export is None else _quantization(args.export),
    )
    metrics = result["metrics"]
    written = sorted(p.name for p in Path(args.out).iterdir())
    print(f"\ntest accuracy {metrics['test_accuracy']:.4f}  sparsity {metrics['sparsity']:.2%}  "
          f"({result['data_source']})")
    for key, value in metrics.items():  # the models of later phases (ASNI-II, DE and its baseline)
        if key.endswith("_test_accuracy"):
            print(f"{key.removesuffix('_test_accuracy')}: test accuracy {value:.4f}")
    print(f"wrote {Path(args.out).resolve()}: {', '.join(written)}")
    if "tflite" in result:
        print(result["tflite_summary"])


def _quantization(choice):
    return None if choice == "float32" else choice


def _export(args, parser):
    from tfsparse import export, export_policy
    from tfsparse.quantization import is_quantize_aware as quantize_aware
    from tfsparse_app import datasets

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    quantization = _quantization(args.quantization)
    if args.policy is not None and args.dense:
        parser.error("--policy chooses between the sparse and the dense file itself; leave out --dense")
    if args.policy == "both":
        _refuse_existing(export_policy.fastest_path(out), args.overwrite)
    model = _load_keras(Path(args.model))
    if quantization == "int8" and args.data is None and not quantize_aware(model):
        parser.error("--quantization int8 needs --data (calibration inputs), unless the model was trained "
                     "with tfsparse.quantize_aware (its learned ranges are used)")
    representative = verification = None
    if args.data is not None:
        data = datasets.load(args.data, data_dir=args.data_dir, max_train=1000, max_test=1000)
        representative, verification = data.x_train[:500], data.x_test
    report = export.to_tflite(model, out, quantization=quantization, representative_data=representative,
                              sparse=not args.dense, int8_io=args.int8_io, verification_data=verification,
                              policy=args.policy, per_channel=False if args.per_tensor else None)
    print(report)


def _load_keras(source):
    import keras

    if not source.is_file():
        raise FileNotFoundError(f"No such model file: {source}")
    try:
        return keras.models.load_model(source, compile=False)
    except Exception as error:  # Keras raises many types for a bad archive
        raise ValueError(f"Could not read {source} as a Keras model ({type(error).__name__}: {error})") from error


def _refuse_existing(out, overwrite):
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it.")


def _compress(args, parser):
    from tfsparse import compression
    from tfsparse_app import datasets

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if (args.bits is None) == (args.data is None):
        parser.error("give either --bits N or --data NAME (to search the bits per layer)")
    model = _load_keras(Path(args.model))
    bits = args.bits
    if bits is None:
        data = datasets.load(args.data, data_dir=args.data_dir, max_train=1024, max_test=1)
        bits, divergence = compression.search_bits(model, data.x_train, divergence_budget=args.budget)
        print(f"searched bits per layer (KL {divergence:.4g} <= {args.budget}): {bits}")
    print(compression.compress(model, out, bits=bits))


def _decompress(args, parser):
    from tfsparse import compression

    out = Path(args.out)
    _refuse_existing(out, args.overwrite)
    if not Path(args.file).is_file():
        raise FileNotFoundError(f"No such file: {args.file}")
    model = compression.decompress(args.file)
    model.save(out)
    print(f"wrote {out}")


def _demo(args, parser):
    from tfsparse_app import report, runner

    out = report.OutputDirectory(args.out, overwrite=args.overwrite)
    dataset = "fashion_mnist" if _has_fashion_mnist() else "mnist"
    runs = (("dense", 0.0, None), ("magnitude", 0.9, {"allocation": "global"}))
    try:
        results = {}
        for method, sparsity, options in runs:
            print(f"\n=== {method}: LeNet-300-100 on {dataset}, {args.epochs} epochs ===")
            results[method] = runner.run_job(
                method, "lenet_300_100", dataset, sparsity, args.epochs, out.path / method,
                method_options=options, verbose=2,
            )
    except BaseException:
        out.abandon()
        raise
    final = out.commit()
    dense, pruned = results["dense"]["metrics"], results["magnitude"]["metrics"]
    print(f"""
=== tfsparse demo: done ({results['dense']['data_source']}) ===
dense      test accuracy {dense['test_accuracy']:.4f}   sparsity {dense['sparsity']:.2%}
magnitude  test accuracy {pruned['test_accuracy']:.4f}   sparsity {pruned['sparsity']:.2%}  (global magnitude pruning)
Outputs in {final.resolve()}:
  dense/ and magnitude/: model.keras (stripped, plain Keras), report.md, report.json, training.png, layers.png
Next: tfsparse inspect {final / 'magnitude' / 'model.keras'}""")


def _has_fashion_mnist():
    """True when Fashion-MNIST is available without a download."""
    from tfsparse_app import datasets

    try:
        datasets.load("fashion_mnist", download=False, max_train=1, max_test=1)
    except FileNotFoundError:
        print("Fashion-MNIST not found locally (apt-get install dataset-fashion-mnist); "
              "the demo uses MNIST instead.")
        return False
    return True


def _inspect(args, parser):
    from tfsparse import stats

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    if path.suffix == ".tflite":
        from tfsparse import tflite_tensors

        print(tflite_tensors.format_rows(tflite_tensors.tensor_rows(path), path.stat().st_size))
        return
    if path.suffix != ".keras":
        raise ValueError(f"tfsparse inspect reads .keras and .tflite files. Received: {path}")
    from tfsparse import structure

    model = _load_keras(path)
    rows = stats.layer_rows(model)
    structures = structure.model_structures(model, [row["path"] for row in rows])
    print(structure.add_column(stats.format_table(rows), "structure", structures))


def _methods(args, parser):
    from tfsparse_app import recipes

    for name, recipe in sorted(recipes.RECIPES.items()):
        print(f"{name:12s} {recipe.summary}\n{'':12s} paper: {recipe.paper}")


if __name__ == "__main__":
    sys.exit(main())
