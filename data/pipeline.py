"""The tf.data pipeline: dict batches from a validated table.

Every batch is a dict with ``image`` (B, S, S, 3) float32 in [-1, 1] ((x - 127.5) / 127.5, as the
LDLVA release), ``label`` (B,) int32 and ``index`` (B,) int32 (the row in the table), plus what the
method asked for: per-sample arrays given in ``extras`` (``va``, ``votes``...), ``landmarks``
(B, L, 2) in pixels of the augmented image, and ``neighbor_images`` (B, K, S, S, 3) with
``neighbors`` (B, K) for LDLVA's forward mode.

Determinism and exact resume: the training stream is a pure function of (seed, step). Epoch ``e``
visits the rows in ``stateless_shuffle(range(N), seed=(seed, e))`` order and every random
augmentation draws from a stateless RNG keyed by (seed, e, row), so the stream can be restarted at any
global step with ``skip`` and yields exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from data.images import (ImageDecodeError, image_sizes, load_image, load_image_array, raise_for_bad_images,
                         scan_images)
from data.schema import AnnotationTable

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class PipelineConfig:
    image_size: int = 224  # network input side (the paper: 224)
    pad: int = 16  # zero padding before the random crop (paper: 16 px; release: 8 for R18, 4 for R50@112)
    flip: bool = True  # random horizontal flip
    random_erasing: float = 0.0  # probability of random erasing on the central image (release: 0.5)
    image_cache: str = "auto"  # "memory": decode once into RAM; "files": decode every step; "auto": memory if it fits
    memory_budget_gb: float = 3.0  # "auto" keeps images in memory below this size
    seed: int = 0
    deterministic: bool = True  # keep element order fixed under parallel map (needed for exact resume)


class ImageSource:
    """Where a split's pixels come from: an in-memory uint8 array or the image files.

    Both modes decode and resize with the same Python function, ``data.images.load_image`` (upright:
    EXIF orientation applied; pixel limit; OpenCV decode; ``data.images.resize_image``), so they give
    identical pixels: ``memory`` once for the whole split at start-up (threads), ``files`` per element
    inside tf.data through ``tf.numpy_function`` (parallel map; a pure function of the row, so the
    stream stays a pure function of (seed, step)). A file that turns bad mid-run raises
    ``tf.errors.InvalidArgumentError`` naming the CSV, row, file and reason.

    Landmark convention: the table's landmarks are x;y pixels of the *upright* stored image (after EXIF
    orientation, as a viewer shows it; with orientations 5–8 its width and height are the stored ones
    swapped). ``load`` returns the scale (S / upright width, S / upright height) that maps them to the
    (S, S) network image.
    """

    def __init__(self, table: AnnotationTable, image_size: int, cache: str = "auto", memory_budget_gb: float = 3.0,
                 check_files: bool = True):
        self.table = table
        self.size = image_size
        n = len(table)
        need_gb = n * image_size * image_size * 3 / 1e9
        self.mode = cache if cache != "auto" else ("memory" if need_gb <= memory_budget_gb else "files")
        if self.mode not in ("memory", "files"):
            raise ValueError(f"image_cache must be memory, files or auto, got {cache}")
        self.original_sizes = None
        # table row -> 1-based CSV row, for messages (--skip-bad may have dropped rows before it)
        dropped = np.asarray(sorted(table.frame.attrs.get("dropped_rows", [])), np.int64)
        self._csv_rows = np.setdiff1d(np.arange(n + len(dropped)), dropped)[:n] + 1
        if self.mode == "memory":
            self.array = load_image_array(table.image_root, table.paths, image_size, csv_path=table.csv_path,
                                          row_numbers=self._csv_rows)
            self._tensor = tf.convert_to_tensor(self.array)
            if table.landmarks is not None:
                self.original_sizes = _original_sizes(table, self._csv_rows)
        else:
            if check_files:
                raise_for_bad_images(scan_images(table.image_root, table.paths), table.csv_path, n)
            self._file_paths = table.absolute_paths()
            if not ImageSource._exit_hook:
                import atexit

                atexit.register(ImageSource._quiesce_at_exit)
                ImageSource._exit_hook = True

    # Files mode runs Python inside tf.data's threads. A tf.data iterator still alive when the interpreter
    # finalises (a global, a traceback kept in sys.last_traceback) would be destroyed while one of those
    # threads waits for the GIL, which Python then kills: TensorFlow hangs or aborts at exit. An atexit
    # hook (registered by the first files-mode source) therefore makes later calls return at once, waits
    # for the calls in flight to end, and releases every tf.data iterator while Python is still alive.
    _calls_lock = threading.Lock()
    _calls_in_flight = 0
    _last_call = 0.0
    _closing = False
    _exit_hook = False

    @classmethod
    def _quiesce_at_exit(cls, timeout: float = 2.0) -> None:
        import gc
        import sys

        cls._closing = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (cls._calls_in_flight or time.monotonic() - cls._last_call < 0.05):
            time.sleep(0.01)
        sys.last_type = sys.last_value = sys.last_traceback = None
        gc.collect()
        try:  # iterators still referenced (module globals): drop their resource now, not during finalisation
            from tensorflow.python.data.ops.iterator_ops import OwnedIterator

            for obj in gc.get_objects():
                if isinstance(obj, OwnedIterator) and "_iterator_resource" in vars(obj):
                    del obj._iterator_resource
        except Exception:  # noqa: BLE001 - best effort at exit; TensorFlow internals may move
            pass

    def _load_file(self, index):
        """numpy side of files mode: row → (uint8 (S, S, 3), upright (h, w) float32)."""
        cls = ImageSource
        if cls._closing:  # the interpreter is exiting: nobody will read this element
            return np.zeros((self.size, self.size, 3), np.uint8), np.ones(2, np.float32)
        with cls._calls_lock:
            cls._calls_in_flight += 1
        try:
            i = int(index)
            path = self._file_paths[i]
            try:
                image, hw = load_image(path, self.size)
            except ImageDecodeError as exc:  # a ValueError: tf.errors.InvalidArgumentError in the pipeline
                raise ImageDecodeError(f"{self.table.csv_path}, row {self._csv_rows[i]}: image {path}: {exc}") from None
            return image, np.asarray(hw, np.float32)
        finally:
            with cls._calls_lock:
                cls._calls_in_flight -= 1
                cls._last_call = time.monotonic()

    def load(self, index):
        """index () int32 → (uint8 (S, S, 3), scale (2,) float32 from upright stored pixels to S)."""
        if self.mode == "memory":
            image = tf.gather(self._tensor, index)
            if self.original_sizes is not None:
                hw = tf.gather(tf.constant(self.original_sizes, tf.float32), index)
                scale = tf.stack([self.size / hw[1], self.size / hw[0]])
            else:
                scale = tf.ones([2], tf.float32)
            return image, scale
        image, hw = tf.numpy_function(self._load_file, [index], [tf.uint8, tf.float32], stateful=False,
                                      name="load_image")
        image.set_shape([self.size, self.size, 3])
        hw.set_shape([2])
        return image, tf.stack([self.size / hw[1], self.size / hw[0]])


def _original_sizes(table: AnnotationTable, row_numbers=None) -> np.ndarray:
    """(N, 2) float32 upright (height, width) of every image, read from the headers (nothing decoded)."""
    return image_sizes(table.image_root, table.paths, csv_path=table.csv_path, row_numbers=row_numbers)


def normalize(image_uint8):
    """uint8 pixels → the network input range [-1, 1] ((x − 127.5)/127.5, as the LDLVA release).

    The one normalisation of the project: training, evaluation, the figures and the SavedModel all use
    it. A backbone whose pretrained weights expect another range maps [-1, 1] to it in its first layer.
    """
    return (tf.cast(image_uint8, tf.float32) - 127.5) / 127.5


def _augment(image, seed, size, pad, flip, erase_prob, landmarks=None):
    """Flip, zero-pad + random crop, random erasing; stateless in ``seed`` (2,) int32."""
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    image = normalize(image)
    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[0]) < 0.5
        image = tf.cond(do_flip, lambda: tf.image.flip_left_right(image), lambda: image)
        if landmarks is not None:
            landmarks = tf.cond(do_flip, lambda: tf.stack([size - landmarks[:, 0], landmarks[:, 1]], axis=1),
                                lambda: landmarks)
    if pad > 0:
        # Zero padding in pixel space is -1 after normalisation.
        image = tf.pad(image + 1.0, [[pad, pad], [pad, pad], [0, 0]]) - 1.0
        offset = tf.random.stateless_uniform([2], seeds[1], 0, 2 * pad + 1, dtype=tf.int32)
        image = tf.slice(image, [offset[0], offset[1], 0], [size, size, 3])
        if landmarks is not None:
            landmarks = landmarks + tf.cast(pad - tf.reverse(offset, [0]), tf.float32)[None, :]
    if erase_prob > 0:
        image = _random_erasing(image, seeds[2], erase_prob, size)
    if landmarks is not None:
        return image, landmarks
    return image


def _random_erasing(image, seed, prob, size):
    """Random erasing (Zhong et al.): p, area in [0.02, 0.3], aspect in [0.3, 1/0.3], uniform noise fill."""
    s = tf.random.experimental.stateless_split(seed, num=5)
    area = tf.random.stateless_uniform([], s[0], 0.02, 0.3) * size * size
    log_ratio = tf.random.stateless_uniform([], s[1], math.log(0.3), math.log(1 / 0.3))
    ratio = tf.exp(log_ratio)
    h = tf.minimum(tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32), size)
    w = tf.minimum(tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32), size)
    top = tf.random.stateless_uniform([], s[2], 0, size - h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], s[3], 0, size - w + 1, dtype=tf.int32)
    rows = tf.range(size)[:, None]
    cols = tf.range(size)[None, :]
    mask = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    noise = tf.random.stateless_uniform([size, size, 3], s[4], -1.0, 1.0)
    erased = tf.where(mask[:, :, None], noise, image)
    apply = tf.random.stateless_uniform([], tf.reverse(s[4], [0]), 0.0, 1.0) < prob
    return tf.cond(apply, lambda: erased, lambda: image)


def _plain(fn):
    """``fn`` for ``Dataset.map``/``flat_map`` without AutoGraph: the pipeline's functions branch only on Python
    values (``tf.cond`` where a tensor decides), so converting them buys nothing, and converting them cost every
    fresh process ~1.5 s at its first dataset build (2.2 → 0.7 s on a 2-vCPU AMD EPYC; the batches are the same)."""
    return tf.autograph.experimental.do_not_convert(fn)


def _gather_extras(extras, index):
    return {name: tf.gather(tensor, index) for name, tensor in extras.items()}


def _as_tensors(extras: dict | None) -> dict:
    return {k: tf.constant(v) for k, v in (extras or {}).items()}


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    return math.ceil(num_samples / batch_size)


# --- which rows each epoch visits (--sampler) -----------------------------------------------------------

SAMPLERS = ("uniform", "balanced")


def class_balanced_indices(labels, num_classes: int, epoch: int, seed: int = 0) -> np.ndarray:
    """Rows of epoch ``epoch`` under ``--sampler balanced``: N rows drawn with replacement, row i with
    probability ∝ 1 / n_{y_i} (the count of its class), so every class is drawn equally often in expectation.

    As torchsampler's ``ImbalancedDatasetSampler`` (github.com/ufoym/imbalanced-dataset-sampler,
    ``torchsampler/imbalanced.py``: weights 1 / label count, ``torch.multinomial(weights, num_samples,
    replacement=True)``, ``num_samples`` = the dataset size). The draw is keyed by (seed, epoch) as the
    progressively balanced sampler of LA-Net is, so the sequence is a pure function of them and a resumed
    run sees exactly the rows an uninterrupted one does. A class with no rows is never drawn.
    """
    labels = np.asarray(labels).reshape(-1)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = 1.0 / counts[labels]
    rng = np.random.default_rng([int(seed), int(epoch)])
    return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum()).astype(np.int32)


def epoch_sampler(sampler: str, labels, num_classes: int, seed: int, method_indices=None, method: str = "",
                  log=print):
    """``(epoch_indices, record)``: the callable ``epoch → rows`` the training stream visits (None = the
    uniform shuffle of :func:`make_train_dataset`) and what config.json records of it.

    ``method_indices`` is a method's own sampler (``MethodInputs.epoch_indices``): the method keeps it whatever
    ``sampler`` asks for, and a ``balanced`` request says so in the log.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if method_indices is not None:
        inner = getattr(method_indices, "func", method_indices)
        own = f"{method}'s own ({getattr(inner, '__name__', type(inner).__name__)})"
        if sampler == "balanced":
            log(f"--sampler balanced: {method} keeps its own sampler ({getattr(inner, '__name__', 'epoch_indices')}); "
                "the run-level sampler is not applied")
        return method_indices, {"requested": sampler, "effective": own}
    if sampler == "balanced":
        labels = np.asarray(labels).reshape(-1)

        def balanced(epoch):
            return class_balanced_indices(labels, num_classes, epoch, seed)
        return balanced, {"requested": sampler, "effective": "balanced"}
    return None, {"requested": sampler, "effective": "uniform"}


def make_train_dataset(source: ImageSource, config: PipelineConfig, batch_size: int, epochs: int,
                       start_step: int = 0, extras: dict | None = None, landmarks: bool = False,
                       neighbor_table: np.ndarray | None = None, neighbor_images: bool = False,
                       epoch_indices=None) -> tf.data.Dataset:
    """The whole training stream (all epochs), starting at global step ``start_step``.

    ``epoch_indices(epoch) -> np.ndarray`` may replace the default uniform shuffle (e.g. LA-Net's
    progressively balanced sampler); it must be deterministic in ``epoch``.
    """
    table = source.table
    n = len(table)
    size, pad = config.image_size, config.pad
    labels = tf.constant(table.labels, tf.int32)
    extra_tensors = _as_tensors(extras)
    lm_tensor = tf.constant(table.landmarks) if landmarks else None
    nb_tensor = tf.constant(neighbor_table, tf.int32) if neighbor_table is not None else None
    seed = int(config.seed)

    def load_one(epoch, index):
        draw = tf.stack([tf.constant(seed, tf.int32), tf.cast(epoch * (n + 1) + index, tf.int32)])
        image, scale = source.load(index)
        out = {"label": tf.gather(labels, index), "index": index}
        if landmarks:
            points = tf.gather(lm_tensor, index) * scale[None, :]
            out["image"], out["landmarks"] = _augment(image, draw, size, pad, config.flip, config.random_erasing, points)
        else:
            out["image"] = _augment(image, draw, size, pad, config.flip, config.random_erasing)
        out.update(_gather_extras(extra_tensors, index))
        if nb_tensor is not None:
            neighbors = tf.gather(nb_tensor, index)
            out["neighbors"] = neighbors
            if neighbor_images:
                def one_neighbor(args):
                    k, nb = args
                    nb_seed = tf.stack([draw[0] + 7919 * (k + 1), draw[1]])
                    img, _ = source.load(nb)
                    # The release augments neighbours with flip + pad/crop but no erasing.
                    return _augment(img, nb_seed, size, pad, config.flip, 0.0)
                out["neighbor_images"] = tf.map_fn(
                    one_neighbor, (tf.range(tf.shape(neighbors)[0]), neighbors),
                    fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return out

    if epoch_indices is None:
        counts = [n] * epochs
        def order_of(epoch):
            return tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int32), seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    else:
        orders = [np.asarray(epoch_indices(e), np.int32) for e in range(epochs)]
        counts = [len(o) for o in orders]
        flat = tf.constant(np.concatenate(orders), tf.int32)
        offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)]), tf.int64)
        def order_of(epoch):
            return flat[offsets[epoch]:offsets[epoch + 1]]

    def epoch_dataset(epoch, skip_samples=0):
        # Batches never straddle epochs; the last batch of an epoch may be smaller (as in the release).
        epoch = tf.cast(epoch, tf.int32)
        ds = tf.data.Dataset.from_tensor_slices(order_of(epoch))
        if skip_samples:
            ds = ds.skip(skip_samples)
        ds = ds.map(_plain(lambda i: load_one(epoch, i)), num_parallel_calls=AUTOTUNE,
                    deterministic=config.deterministic)
        return ds.batch(batch_size)

    # Locate the global step: epoch and batch within it.
    start_epoch, step = 0, int(start_step)
    while start_epoch < epochs and step >= math.ceil(counts[start_epoch] / batch_size):
        step -= math.ceil(counts[start_epoch] / batch_size)
        start_epoch += 1
    if start_epoch >= epochs:
        raise ValueError(f"start_step {start_step} is past the end of training ({epochs} epochs)")
    ds = epoch_dataset(start_epoch, step * batch_size)
    if start_epoch + 1 < epochs:
        ds = ds.concatenate(tf.data.Dataset.range(start_epoch + 1, epochs).flat_map(_plain(epoch_dataset)))
    return ds.prefetch(AUTOTUNE)


def make_eval_dataset(source: ImageSource, config: PipelineConfig, batch_size: int, extras: dict | None = None,
                      landmarks: bool = False) -> tf.data.Dataset:
    """Plain resize + normalise (the release's pad + centre crop is the identity), fixed order."""
    table = source.table
    labels = tf.constant(table.labels, tf.int32)
    extra_tensors = _as_tensors(extras)
    lm_tensor = tf.constant(table.landmarks) if landmarks else None

    def load_one(index):
        image, scale = source.load(index)
        out = {"image": normalize(image), "label": tf.gather(labels, index), "index": index}
        if landmarks:
            out["landmarks"] = tf.gather(lm_tensor, index) * scale[None, :]
        out.update(_gather_extras(extra_tensors, index))
        return out

    ds = tf.data.Dataset.range(len(table)).map(_plain(lambda i: tf.cast(i, tf.int32)))
    ds = ds.map(_plain(load_one), num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def collect_outputs(fn, dataset, keep: tuple[str, ...] = (), input_key: str = "image") -> dict[str, np.ndarray]:
    """Run ``fn(batch[input_key]) → {name: tensor}`` over every batch and concatenate each output.

    The one inference loop of the project (evaluation, figures, bank initialisation, pseudo-VA):
    ``fn`` is compiled once as a ``tf.function``; ``keep`` names batch fields to return too (e.g.
    ``label``, ``index``). Batches come in the dataset's order (table order for evaluation datasets).
    """
    step = tf.function(fn, reduce_retracing=True)
    parts: dict[str, list] = {}
    for batch in dataset:
        outputs = step(batch[input_key])
        for name, value in outputs.items():
            parts.setdefault(name, []).append(np.asarray(value))
        for name in keep:
            parts.setdefault(name, []).append(np.asarray(batch[name]))
    return {name: np.concatenate(values) for name, values in parts.items()}
