"""Directed Evolution: sparsify a trained network by screening candidate sets.

L. M. Franca-Neto, "A Directed-Evolution Method for Sparsification and
Compression of Neural Networks", arXiv:2206.05859 (2022). Only the abstract
is known; it fixes [A] and the rest is our design:

- [A] relevance is measured directly: the weights whose tentative zeroing
  changes the network least are zeroed; evolution (variation, screening,
  selection) replaces the combinatorial search;
- [A] the original network is the teacher, the student is evolved to
  per-layer sparsity targets keeping the teacher-student divergence small;
- [A] after each cycle the best candidate set is committed, optionally only
  a subset of it chosen by magnitude;
- ours: the divergence is KL(teacher || student) of the output
  distributions on a fixed calibration batch; a cycle samples `population`
  sets of `candidate_fraction` of the layer's survivors, drawn mostly
  (`directed_share`) from the survivors of smallest magnitude and otherwise
  at random; with `recombine`, half of the next population mixes the two
  best sets of the previous cycle, with `mutation` of their members
  replaced at random; a layer stops at its target or when the best
  candidate's divergence exceeds `divergence_budget`; layers are evolved
  from the first to the last; fine-tuning afterwards is off by default.

Speed: the layer's input activations on the calibration batch are computed
once per layer. A candidate only changes the layer's pre-activations, by
-A[:, i] W_ij in column j for each of its weights, so all candidates of a
cycle are scored together: their changes are segment-summed into one
(population x examples x units) tensor, and only the layers after the
evolved one run, on all candidates at once. No `predict` per candidate.

Scope: Dense layers of a Sequential (or single-chain functional) model;
other layers are carried along unchanged.
"""

import math
import time

import keras
import numpy as np

from tfsparse import allocation as allocation_lib
from tfsparse import masking, schedules
from tfsparse._utils import check_batch_shape
from tfsparse.divergence import kl_divergence
from tfsparse.methods.base import check_integer
from tfsparse.surgery import _check_model, masked_weights, prune


class DirectedEvolution:
    """Evolves a sparse student from a trained teacher (runs after training).

    Args:
        teacher: the trained Keras model (Sequential or a single chain).
        calibration_data: inputs for the divergence (e.g. 1024 training
            examples), shaped like the model's input.
        layer_sparsity: the target per Dense layer: one float for all, or a
            dict layer name -> sparsity.
        population: candidate sets per cycle.
        candidate_fraction: size of a candidate set, as a fraction of the
            layer's current survivors.
        directed_share: fraction of a set drawn from the smallest-magnitude
            survivors (the rest at random).
        commit_fraction: commit only this fraction of the best set, its
            smallest-magnitude members (1: the whole set).
        recombine, mutation: see the module docstring.
        divergence_budget: stop a layer when its best candidate's KL exceeds
            this (None: no budget).
        fine_tune_epochs: epochs of fine-tuning on `fine_tune_data` after
            evolution (our addition; 0 = off, the default).
        seed: random seed.
        verbose: progress bar per layer.

    Example:

    ```python
    evolution = DirectedEvolution(teacher, x_train[:1024], layer_sparsity=0.9)
    student = evolution.run()            # masked student; tfsparse.strip(student) to ship
    evolution.history[-1]                # {'cycle', 'layer', 'sparsity', 'divergence'}
    ```
    """

    def __init__(self, teacher, calibration_data, layer_sparsity=0.9, population=32, candidate_fraction=0.02,
                 directed_share=0.8, commit_fraction=1.0, recombine=True, mutation=0.1,
                 divergence_budget=None, fine_tune_epochs=0, fine_tune_data=None, seed=0, verbose=1):
        _check_model(teacher, "teacher")
        self.layers = _chain(teacher)
        data = np.asarray(calibration_data, dtype=np.float32)
        check_batch_shape(data, teacher.inputs[0].shape[1:], "`calibration_data`")
        dense_names = [layer.name for layer in self.layers if type(layer) is keras.layers.Dense]
        if not dense_names:
            raise ValueError(f"`teacher` has no Dense layer to evolve. Layers: {[l.name for l in self.layers]}")
        self.targets = _targets(layer_sparsity, dense_names)
        check_integer(population, "population", minimum=2)
        for name, value in [("candidate_fraction", candidate_fraction), ("directed_share", directed_share),
                            ("commit_fraction", commit_fraction), ("mutation", mutation)]:
            if not 0.0 <= value <= 1.0 or (name in ("candidate_fraction", "commit_fraction") and value == 0):
                raise ValueError(f"`{name}` must be in (0, 1]. Received: {name}={value}")
        if fine_tune_epochs and fine_tune_data is None:
            raise ValueError("fine_tune_epochs > 0 needs `fine_tune_data=(x, y)`.")
        self.teacher = teacher
        self.calibration = data
        self.population = population
        self.candidate_fraction = candidate_fraction
        self.directed_share = directed_share
        self.commit_fraction = commit_fraction
        self.recombine = recombine
        self.mutation = mutation
        self.divergence_budget = divergence_budget
        self.fine_tune_epochs = fine_tune_epochs
        self.fine_tune_data = fine_tune_data
        self.rng = np.random.default_rng(seed)
        self.verbose = verbose
        self.history = []
        self.candidates_screened = 0
        self.screening_seconds = 0.0

    @property
    def candidates_per_second(self):
        return self.candidates_screened / max(self.screening_seconds, 1e-9)

    def run(self):
        """Returns the evolved student: a masked copy of the teacher."""
        student = prune(self.teacher, layers=list(self.targets))
        self._teacher_logits = keras.ops.convert_to_numpy(self.teacher(self.calibration, training=False))
        handles = {w.layer.name: w for w in masked_weights(student)}
        chain = _chain(student)
        for position, layer in enumerate(chain):
            if layer.name in self.targets:
                self._evolve_layer(chain, position, handles[layer.name], self.targets[layer.name])
        if self.fine_tune_epochs:
            self._fine_tune(student)
        return student

    def _evolve_layer(self, chain, position, weight, target):
        inputs = self.calibration
        for layer in chain[:position]:
            inputs = layer(inputs, training=False)
        inputs = keras.ops.convert_to_tensor(inputs, "float32")
        layer = weight.layer
        goal = weight.size - allocation_lib.keep_count(weight.size, target)
        progress = keras.utils.Progbar(goal, verbose=self.verbose, unit_name="weights")
        if self.verbose:
            print(f"Directed evolution of '{layer.name}' to sparsity {target:.3f}")
        parents = []
        cycle = 0
        while True:
            mask = keras.ops.convert_to_numpy(weight.mask) > 0
            pruned = int((~mask).sum())
            if pruned >= goal:
                break
            kernel = keras.ops.convert_to_numpy(weight.kernel)
            survivors = np.flatnonzero(mask)
            size = min(max(1, math.ceil(self.candidate_fraction * survivors.size)), goal - pruned)
            candidates = self._sample(survivors, np.abs(kernel.ravel()[survivors]), size, parents)
            started = time.perf_counter()
            divergences = self.score(chain, position, inputs, kernel, mask, candidates)
            self.screening_seconds += time.perf_counter() - started
            self.candidates_screened += len(candidates)
            order = np.argsort(divergences)
            best = candidates[order[0]]
            if self.divergence_budget is not None and divergences[order[0]] > self.divergence_budget:
                break
            if self.commit_fraction < 1.0:
                keep = max(1, math.ceil(self.commit_fraction * best.size))
                best = best[np.argsort(np.abs(kernel.ravel()[best]), kind="stable")[:keep]]
            mask.ravel()[best] = False
            masking.assign_masks([weight], {weight.name: mask})
            parents = [candidates[i] for i in order[:2]]
            cycle += 1
            progress.update(int((~mask).sum()))
            self.history.append({"cycle": cycle, "layer": layer.name, "sparsity": float(1 - mask.mean()),
                                 "divergence": float(divergences[order[0]])})

    def _sample(self, survivors, magnitudes, size, parents):
        """`population` index sets of `size` survivors each (flat kernel indices)."""
        pool = survivors[np.argsort(magnitudes, kind="stable")[: max(4 * size, size + 1)]]
        directed = int(round(self.directed_share * size))
        sets = []
        for index in range(self.population):
            if self.recombine and len(parents) == 2 and index < self.population // 2:
                mixed = np.union1d(parents[0], parents[1])
                chosen = self.rng.choice(mixed, size=min(size, mixed.size), replace=False)
                replace = self.rng.random(chosen.size) < self.mutation
                chosen = np.concatenate([chosen[~replace], self.rng.choice(pool, size=int(replace.sum()))])
            else:
                chosen = np.concatenate([self.rng.choice(pool, size=directed, replace=False),
                                         self.rng.choice(survivors, size=size - directed, replace=False)])
            chosen = np.unique(chosen)
            alive = np.intersect1d(chosen, survivors, assume_unique=True)
            if alive.size < size:  # top up duplicates / stale members with fresh small-magnitude survivors
                rest = np.setdiff1d(pool, alive, assume_unique=True)
                alive = np.concatenate([alive, self.rng.choice(rest, size=size - alive.size, replace=False)])
            sets.append(np.sort(alive[:size]))
        return sets

    def score(self, chain, position, inputs, kernel, mask, candidates):
        """KL(teacher || student with each candidate zeroed), all candidates at once.

        `inputs`: the layer's input activations on the calibration batch;
        `kernel` and `mask`: the layer's current values; `candidates`: flat
        kernel index arrays, all of the same length.
        """
        layer = chain[position]
        effective = keras.ops.convert_to_tensor(np.where(mask, kernel, 0).astype("float32"))
        base = keras.ops.matmul(inputs, effective)
        if layer.use_bias:
            base = base + layer.bias
        indices = np.stack(candidates)  # (P, k)
        # Candidates go through in chunks that keep the gathered activations near 16 M floats.
        chunk = max(1, (1 << 24) // max(1, indices.shape[1] * inputs.shape[0]))
        divergences = [self._score_chunk(chain, position, inputs, kernel, base, indices[start:start + chunk])
                       for start in range(0, len(indices), chunk)]
        return np.concatenate(divergences)

    def _score_chunk(self, chain, position, inputs, kernel, base, indices):
        layer, (count, size), units = chain[position], indices.shape, kernel.shape[1]
        rows, columns = np.divmod(indices, units)
        # Each zeroed weight removes A[:, i] * W_ij from column j of its candidate's pre-activations.
        contributions = keras.ops.take(keras.ops.transpose(inputs), rows.ravel(), axis=0)  # (count * size, n)
        contributions = contributions * kernel.ravel()[indices.ravel()][:, None]
        segments = (np.arange(count)[:, None] * units + columns).ravel()
        change = keras.ops.segment_sum(contributions, segments, num_segments=count * units)
        change = keras.ops.transpose(keras.ops.reshape(change, (count, units, -1)), (0, 2, 1))
        batch = keras.ops.reshape(layer.activation(base[None] - change), (-1, units))  # (count * n, units)
        for later in chain[position + 1:]:
            batch = later(batch, training=False)
        logits = keras.ops.reshape(batch, (count, inputs.shape[0], -1))
        return keras.ops.convert_to_numpy(kl_divergence(self._teacher_logits[None], logits))

    def _fine_tune(self, student):
        x, y = self.fine_tune_data
        student.compile(keras.optimizers.Adam(1e-4),
                        keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        student.fit(x, y, batch_size=128, epochs=self.fine_tune_epochs, verbose=self.verbose)

def _chain(model):
    """The model's layers as one chain (Sequential, or a functional chain)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):
        return layers
    for previous, layer in zip(layers, layers[1:]):
        if len(layer._inbound_nodes) != 1 or layer.input is not previous.output:
            raise ValueError(
                "DirectedEvolution evolves models whose layers form one chain (Sequential, or a "
                f"functional model without branches); layer '{layer.name}' does not follow "
                f"'{previous.name}'."
            )
    return layers


def _targets(layer_sparsity, names):
    if isinstance(layer_sparsity, dict):
        unknown = sorted(set(layer_sparsity) - set(names))
        if unknown:
            raise ValueError(f"`layer_sparsity` names {unknown}, which are not Dense layers of the model: {names}")
        return {name: schedules.check_sparsity(value, f"layer_sparsity[{name!r}]")
                for name, value in layer_sparsity.items()}
    schedules.check_sparsity(layer_sparsity, "layer_sparsity")
    return {name: layer_sparsity for name in names}
