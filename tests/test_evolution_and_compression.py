import json
import warnings

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import compression
from tfsparse.divergence import kl_divergence
from tfsparse.methods import DirectedEvolution
from tfsparse_app import cli, recipes

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def teacher(mnist_subset):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu", name="fc1"),
                              keras.layers.Dense(32, activation="relu", name="fc2"),
                              keras.layers.Dense(10, name="logits")])
    model.compile(keras.optimizers.Adam(2e-3), LOSS, metrics=["accuracy"])
    model.fit(mnist_subset.x_train, mnist_subset.y_train, batch_size=64, epochs=3, verbose=0)
    return model


def test_kl_fitness_matches_a_hand_computation():
    teacher = np.array([[2.0, 0.0, -1.0]])
    student = np.array([[[1.0, 1.0, 0.0]], [[2.0, 0.0, -1.0]]])  # two candidates, one example
    p = np.exp(teacher) / np.exp(teacher).sum()
    q = np.exp(student[0, 0]) / np.exp(student[0, 0]).sum()
    expected = np.sum(p * np.log(p / q))
    np.testing.assert_allclose(kl_divergence(teacher[None], student), [expected, 0.0], atol=1e-6)


def test_batched_incremental_scoring_equals_full_recomputation(teacher, mnist_subset):
    calibration = mnist_subset.x_train[:200]
    evolution = DirectedEvolution(teacher, calibration, layer_sparsity=0.5, verbose=0)
    evolution._teacher_logits = keras.ops.convert_to_numpy(teacher(calibration))
    student = tfsparse.prune(teacher, layers=["fc1", "fc2", "logits"])
    chain = [layer for layer in student.layers]
    for position, name in ((1, "fc1"), (3, "logits")):
        weight = next(w for w in tfsparse.masked_weights(student) if w.layer.name == name)
        kernel = keras.ops.convert_to_numpy(weight.kernel)
        mask = np.ones(kernel.shape, bool)
        inputs = calibration
        for layer in chain[:position]:
            inputs = layer(inputs)
        rng = np.random.default_rng(0)
        candidates = [np.sort(rng.choice(kernel.size, 25, replace=False)) for _ in range(6)]
        batched = evolution.score(chain, position, keras.ops.convert_to_tensor(inputs), kernel, mask, candidates)
        for candidate, value in zip(candidates, batched):
            trial = kernel.copy()
            trial.ravel()[candidate] = 0
            weight.kernel.assign(trial)
            full = kl_divergence(evolution._teacher_logits[None], student(calibration)[None])
            np.testing.assert_allclose(value, keras.ops.convert_to_numpy(full)[0], rtol=1e-3, atol=1e-6)
        weight.kernel.assign(kernel)


def test_evolution_reaches_each_target_exactly_and_beats_one_shot_magnitude(teacher, mnist_subset):
    targets = {"fc1": 0.9, "fc2": 0.8, "logits": 0.5}
    evolution = DirectedEvolution(teacher, mnist_subset.x_train[:512], layer_sparsity=targets,
                                  population=16, candidate_fraction=0.05, verbose=0)
    student = tfsparse.strip(evolution.run())
    for name, target in targets.items():
        kernel = student.get_layer(name).kernel.numpy()
        assert np.count_nonzero(kernel) == round(kernel.size * (1 - target))
    np.testing.assert_array_equal(student.get_layer("fc1").bias.numpy(), teacher.get_layer("fc1").bias.numpy())
    assert evolution.candidates_screened > 0 and evolution.candidates_per_second > 0
    assert evolution.history[-1]["layer"] == "logits"
    baseline = tfsparse.strip(tfsparse.prune_once(tfsparse.prune(teacher, layers=list(targets)), targets))
    results = []
    for model in (student, baseline):
        model.compile(loss=LOSS, metrics=["accuracy"])
        results.append(model.evaluate(mnist_subset.x_test, mnist_subset.y_test, verbose=0)[1])
    assert results[0] > results[1]


def test_evolution_refuses_bad_input(teacher):
    with pytest.raises(ValueError, match=r"calibration_data.*\(N, 28, 28, 1\).*\(5, 784\)"):
        DirectedEvolution(teacher, np.zeros((5, 784)))
    with pytest.raises(ValueError, match="layer_sparsity"):
        DirectedEvolution(teacher, np.zeros((5, 28, 28, 1)), layer_sparsity=1.2)
    with pytest.raises(ValueError, match=r"\['fc9'\], which are not Dense layers"):
        DirectedEvolution(teacher, np.zeros((5, 28, 28, 1)), layer_sparsity={"fc9": 0.5})


@pytest.mark.parametrize("method", ["kmeans", "uniform"])
def test_quantize_encode_decode_round_trip_on_random_sparse_tensors(tmp_path, method):
    rng = np.random.default_rng(0)
    for trial in range(6):
        bits = int(rng.integers(1, 9))
        units, channels = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        if trial % 2:
            inputs = keras.Input((7, 7, channels))
            layer = keras.layers.Conv2D(units, int(rng.integers(1, 4)))
        else:
            inputs = keras.Input((int(rng.integers(1, 60)),))
            layer = keras.layers.Dense(units)
        model = keras.Model(inputs, layer(inputs))
        shape = tuple(layer.kernel.shape)
        kernel = rng.normal(size=shape).astype("float32") * (rng.random(shape) < rng.random())
        layer.kernel.assign(kernel)
        layer.bias.assign(rng.normal(size=units).astype("float32"))
        path = tmp_path / f"m{trial}.tfsz"
        report = compression.compress(model, path, bits=bits, method=method)
        back = compression.decompress(path)
        expected = compression.quantized_model(model, bits, method)
        for a, b in zip(back.weights, expected.weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
        restored = keras.ops.convert_to_numpy(back.weights[0])
        assert np.array_equal(restored == 0, kernel == 0)  # zeros stay exact, survivors stay nonzero or hit a 0 code
        assert len(np.unique(restored[restored != 0])) <= 2 ** bits
        assert report.file_bytes == path.stat().st_size


def test_quantize_and_varints_by_hand():
    codebook, indices = compression.quantize(np.array([1.0, 1.1, 5.0, 5.2, 9.0]), bits=1, method="kmeans")
    np.testing.assert_allclose(codebook, [1.05, 6.4], rtol=1e-6)
    np.testing.assert_array_equal(indices, [0, 0, 1, 1, 1])
    values = np.array([0, 1, 127, 128, 300, 2 ** 20])
    assert compression._varints([300]) == bytes([0xAC, 0x02])
    np.testing.assert_array_equal(compression._from_varints(compression._varints(values)), values)


def test_bit_search_and_lenet_compression_ratio(teacher, mnist_subset, tmp_path):
    pruned = tfsparse.strip(tfsparse.prune_once(tfsparse.prune(teacher), 0.9))
    bits, divergence = compression.search_bits(pruned, mnist_subset.x_train[:256], divergence_budget=0.02)
    assert set(bits) == {"fc1/kernel", "fc2/kernel", "logits/kernel"} and divergence <= 0.02
    assert all(2 <= b <= 8 for b in bits.values())
    report = compression.compress(pruned, tmp_path / "m.tfsz", bits=bits)
    assert report.ratio == pytest.approx(32 * 52_650 / (8 * report.file_bytes))
    assert report.ratio > 15  # 90 % zeros, <= 8 bits, everything counted
    assert "everything counted" in str(report)


def test_corrupted_truncated_and_newer_files_are_refused(teacher, tmp_path):
    path = tmp_path / "m.tfsz"
    compression.compress(teacher, path, bits=4)
    content = path.read_bytes()
    corrupted = bytearray(content)
    corrupted[len(content) // 2] ^= 0xFF
    for name, data in (("corrupted", bytes(corrupted)), ("truncated", content[:-100])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="corrupted or truncated"):
            compression.decompress(tmp_path / name)
    newer = content[:5] + (2).to_bytes(2, "little") + content[7:]
    (tmp_path / "newer").write_bytes(newer)
    with pytest.raises(ValueError, match="version 2.*up to version 1"):
        compression.decompress(tmp_path / "newer")
    (tmp_path / "garbage").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a tfsparse compressed model"):
        compression.decompress(tmp_path / "garbage")


def test_compress_and_decompress_commands(teacher, tmp_path, capsys):
    source = tmp_path / "teacher.keras"
    teacher.save(source)
    out = tmp_path / "t.tfsz"
    assert cli.main(["compress", str(source), "--out", str(out), "--bits", "3"]) == 0
    assert "smaller than float32" in capsys.readouterr().out
    assert cli.main(["compress", str(source), "--out", str(out), "--bits", "3"]) == 2  # exists
    restored = tmp_path / "back.keras"
    assert cli.main(["decompress", str(out), "--out", str(restored)]) == 0
    capsys.readouterr()
    expected = compression.quantized_model(teacher, 3)
    np.testing.assert_array_equal(keras.models.load_model(restored).get_layer("fc1").kernel.numpy(),
                                  expected.get_layer("fc1").kernel.numpy())


def test_run_de_reports_student_baseline_and_compression(tmp_path, capsys):
    out = tmp_path / "de"
    argv = ["run", "--method", "de", "--dataset", "mnist", "--sparsity", "0.8", "--epochs", "2",
            "--population", "8", "--candidate-fraction", "0.1", "--max-train", "1500", "--max-test", "300",
            "--out", str(out), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(argv) == 0
    capsys.readouterr()
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    for model in ("de", "magnitude_oneshot"):  # fine-tuned by default, with the accuracy before
        assert 0.1 < metrics[f"{model}_before_fine_tuning_test_accuracy"] <= 1
        assert 0.1 < metrics[f"{model}_test_accuracy"] <= 1
    assert metrics["de_fine_tune_epochs"] == 2
    assert "| de_before_fine_tuning_test_accuracy |" in (out / "report.md").read_text()
    assert metrics["de_compression_ratio"] > 10
    assert {"de_model.keras", "de_model.tfsz", "de.png"} <= {p.name for p in out.iterdir()}
    student = keras.models.load_model(out / "de_model.keras")
    assert tfsparse.sparsity(student) == pytest.approx(0.8, abs=1e-3)


def test_de_recipe_with_no_fine_tune_keeps_the_evolved_student(teacher, mnist_subset, tmp_path):
    options = {"population": 8, "candidate_fraction": 0.1, "no_fine_tune": True}
    job = recipes.Job(0.8, 2, options, (mnist_subset.x_train, mnist_subset.y_train), tmp_path,
                      retrain=lambda model: pytest.fail("fine-tuned with --no-fine-tune"),
                      evaluate=lambda model: {"test_accuracy": tfsparse.sparsity(model)})
    metrics = recipes.get("de").after_training(job, None, teacher)
    assert metrics["de_fine_tune_epochs"] == 0 and not any("fine_tuning" in key for key in metrics)
    assert metrics["de_test_accuracy"] == pytest.approx(0.8, abs=1e-3)  # evaluated: the evolved student
    assert metrics["magnitude_oneshot_test_accuracy"] == pytest.approx(0.8, abs=1e-3)
