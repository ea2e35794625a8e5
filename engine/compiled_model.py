"""A model compiled to machine code (lleaves), cached beside the model, for single-row scoring.

LightGBM's single-row fast path walks the trees as data; lleaves (LLVM through llvmlite) turns
every tree into branches of native code, about 3x faster per row with models/default
(benchmarks/bench_model_runtime.py). Its scores are LightGBM's up to the order of the float sums
(~1e-16). Compiling takes seconds to minutes and hundreds of MB, so it never happens on the
request path nor inside a serving worker:

- the artifact is the object file lleaves' cache holds, in ``<model dir>/compiled/``, named by the
  model version (the digest of model.txt), the compiler's versions and the CPU it was compiled for
  (the code uses the host's instruction set: an artifact copied to another CPU is not used), with a
  manifest recording the digests of model.txt and of the object file, written atomically after it;
- ``python -m antifraud.engine.compiled_model MODEL_DIR`` compiles it: a deploy step, on the serving
  host (the code is for its CPU). A worker that finds none scores with LightGBM and says how to
  compile it: a serving process never starts a compiler (a child of minutes and hundreds of MB that
  would outlive the service); an exclusive lock on the artifact makes concurrent compiles run once;
- a loaded artifact is checked against LightGBM's scores on rows spread over every feature's range
  (with missing values) before it serves: any difference over 1e-9 and it is not used.

``ANTIFRAUD_MODEL_RUNTIME`` picks the path: ``auto`` (the default: the compiled model when its
artifact is there and checks out, LightGBM otherwise), ``lightgbm`` (never the compiler), ``compiled``
(compile now if needed and fail loudly when it cannot: benchmarks, tests, a host that must have it).
lleaves is an optional dependency (``pip install 'antifraud[compiled]'``); without it, the
service scores with LightGBM, as before.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Final

import numpy as np

from antifraud.engine.model_dir import MODEL_FILE, ModelError, check_complete, model_version

log = logging.getLogger("antifraud.model")

RUNTIME_ENV: Final = "ANTIFRAUD_MODEL_RUNTIME"
COMPILED_DIR: Final = "compiled"
#: scores of the compiled model may differ from LightGBM's by the order of float sums, no more
TOLERANCE: Final = 1e-9
#: the entry point lleaves names in the compiled code
_ENTRY: Final = "forest_root"
# (data, out, first row, end row) -> None, called with the GIL held: a 4 us call gains nothing by
# releasing the GIL and could then wait a switch interval (5 ms) to get it back from another thread
_EntryType = ctypes.PYFUNCTYPE(
    None, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double), ctypes.c_int32, ctypes.c_int32
)
EntryFunction = Callable[[Any, Any, int, int], None]


class RuntimeChoice(StrEnum):
    """Which runtime scores single rows (``ANTIFRAUD_MODEL_RUNTIME``)."""

    AUTO = "auto"
    LIGHTGBM = "lightgbm"
    COMPILED = "compiled"


class CompileError(ModelError):
    """The model could not be compiled, or its compiled artifact cannot be used."""


def runtime_choice(environ: Mapping[str, str] = os.environ) -> RuntimeChoice:
    """The runtime ``ANTIFRAUD_MODEL_RUNTIME`` asks for (auto when unset); ModelError when unknown."""
    value = environ.get(RUNTIME_ENV, "").strip().lower() or RuntimeChoice.AUTO.value
    try:
        return RuntimeChoice(value)
    except ValueError:
        choices = ", ".join(c.value for c in RuntimeChoice)
        raise ModelError(f"{RUNTIME_ENV}={value!r} is not a model runtime; use one of: {choices}") from None


def toolchain() -> str | None:
    """``lleaves-X+llvmlite-Y`` when the compiler is installed, else None (without importing it)."""
    try:
        lleaves, llvmlite = importlib_metadata.version("lleaves"), importlib_metadata.version("llvmlite")
    except importlib_metadata.PackageNotFoundError:
        return None
    return f"lleaves-{lleaves}+llvmlite-{llvmlite}"


def host_target() -> str:
    """The CPU the compiled code is for (name and instruction-set features, as LLVM sees them)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot always tell; lleaves then compiles without extra features
        features = ""
    return f"{llvm.get_host_cpu_name()} {features}"


@dataclass(frozen=True)
class ArtifactKey:
    """What a compiled artifact is valid for: one model.txt, one compiler, one kind of CPU."""

    version: str  # the model's version (directory name + digest of model.txt)
    model_sha256: str  # the whole digest of model.txt
    toolchain: str
    target: str  # host_target()

    @property
    def stem(self) -> str:
        """The artifact's file name without suffix: readable parts, then a digest of the rest."""
        digest = hashlib.sha256(f"{self.model_sha256}|{self.toolchain}|{self.target}".encode()).hexdigest()
        return f"{self.version}-{self.toolchain}-{digest[:12]}"


def artifact_key(name: str, model_text: str, target: str | None = None) -> ArtifactKey | None:
    """The key of the model `model_text` (of directory `name`) on this host; None without lleaves."""
    chain = toolchain()
    if chain is None:
        return None
    sha = hashlib.sha256(model_text.encode()).hexdigest()
    return ArtifactKey(model_version(name, model_text), sha, chain, target or host_target())


@dataclass(frozen=True)
class ArtifactPaths:
    """The files of one artifact in ``<model dir>/compiled/``."""

    folder: Path
    stem: str

    @property
    def object(self) -> Path:
        """The compiled code (lleaves' object cache)."""
        return self.folder / f"{self.stem}.o"

    @property
    def manifest(self) -> Path:
        """Written last: the digests that make the object usable."""
        return self.folder / f"{self.stem}.json"

    @property
    def lock(self) -> Path:
        """Locked (flock) by the one process compiling; the kernel releases it if that one dies."""
        return self.folder / f"{self.stem}.lock"

    @property
    def failed(self) -> Path:
        """Why the last compilation failed: no worker retries until it is deleted."""
        return self.folder / f"{self.stem}.failed"

    @property
    def log(self) -> Path:
        """The background compiler's output."""
        return self.folder / f"{self.stem}.log"


def artifact_paths(directory: Path, key: ArtifactKey) -> ArtifactPaths:
    """Where the artifact of `key` lives for the model directory `directory`."""
    return ArtifactPaths(Path(directory) / COMPILED_DIR, key.stem)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prepare_folder(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        # artifacts are per host and rebuilt on demand: never committed beside the model
        _write_atomically(ignore, b"*\n")


def artifact_ready(paths: ArtifactPaths, key: ArtifactKey) -> bool:
    """Whether a whole artifact for `key` is there (manifest written, digests matching)."""
    try:
        manifest = json.loads(paths.manifest.read_text())
        blob = paths.object.read_bytes()
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("model_sha256") == key.model_sha256
        and manifest.get("object_sha256") == hashlib.sha256(blob).hexdigest()
    )


def compile_artifact(directory: str | Path, expect_sha256: str | None = None) -> Path:
    """Compile the model of `directory` for this host unless done already; return the object file.

    One process at a time per artifact (an exclusive lock); the others wait for it and find it
    done. `expect_sha256`: the digest of the model.txt the caller loaded; if model.txt has changed
    since, nothing is compiled (CompileError). Failures are recorded in the artifact's ``.failed``.
    """
    directory = Path(directory)
    model_file = directory / MODEL_FILE
    text = model_file.read_text()
    check_complete(text, model_file)
    key = artifact_key(directory.name, text)
    if key is None:
        raise CompileError("lleaves is not installed: pip install 'antifraud[compiled]'")
    if expect_sha256 is not None and key.model_sha256 != expect_sha256:
        raise CompileError(f"{model_file} changed since it was loaded: not compiling a model nobody serves")
    paths = artifact_paths(directory, key)
    _prepare_folder(paths.folder)
    with open(paths.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process compiling it: wait, then find it done
        if artifact_ready(paths, key):
            return paths.object
        try:
            seconds = _compile_locked(paths, key, text)
        except Exception as exc:
            _write_atomically(paths.failed, f"{type(exc).__name__}: {exc}\n".encode())
            raise CompileError(
                f"compiling {model_file} with {key.toolchain} failed: {exc} "
                f"(recorded in {paths.failed}; delete it to try again)"
            ) from exc
        paths.failed.unlink(missing_ok=True)
    log.info("compiled %s in %.1f s: %s", key.version, seconds, paths.object)
    return paths.object


def _compile_locked(paths: ArtifactPaths, key: ArtifactKey, text: str) -> float:
    import lleaves

    started = time.perf_counter()
    # lleaves reads a file and writes its cache itself: both under temporary names, renamed at the end
    source = paths.folder / f".{paths.stem}.{os.getpid()}.model.txt"
    staged = paths.folder / f".{paths.stem}.{os.getpid()}.o"
    try:
        source.write_text(text)
        staged.unlink(missing_ok=True)
        lleaves.Model(model_file=str(source)).compile(cache=str(staged))
        blob = staged.read_bytes()
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(staged, paths.object)
    finally:
        source.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    manifest = {
        "model_version": key.version,
        "model_sha256": key.model_sha256,
        "object_sha256": hashlib.sha256(blob).hexdigest(),
        "toolchain": key.toolchain,
        "target": key.target,
        "compile_seconds": round(seconds, 2),
    }
    _write_atomically(paths.manifest, json.dumps(manifest, indent=1).encode())
    return seconds


class CompiledForest:
    """A loaded artifact: the native entry point scoring rows of float64 (NaN = missing)."""

    def __init__(self, paths: ArtifactPaths, key: ArtifactKey, n_features: int) -> None:
        if not artifact_ready(paths, key):
            raise CompileError(f"{paths.object}: no whole artifact for {key.version} (missing or damaged)")
        import llvmlite.binding as llvm
        from lleaves.llvm_binding import compile_module_to_asm

        self.path = paths.object
        self.n_features = n_features
        # what lleaves.Model.compile does when its cache file exists: an empty module, the code
        # taken from the cache (the manifest proved it was compiled from this very model.txt)
        self._engine = compile_module_to_asm(llvm.parse_assembly(""), str(paths.object))
        address = self._engine.get_function_address(_ENTRY)
        if not address:
            raise CompileError(f"{paths.object}: no {_ENTRY} function in the compiled code")
        #: entry(data, out, first, end): scores rows [first, end) of a C-contiguous float64 matrix
        self.entry: EntryFunction = _EntryType(address)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Scores of a matrix of rows (checks, tests; the service calls `entry` on its own buffers)."""
        data = np.ascontiguousarray(rows, dtype=np.float64).reshape(-1, self.n_features)
        out = np.zeros(len(data), dtype=np.float64)
        double_p = ctypes.POINTER(ctypes.c_double)
        self.entry(data.ctypes.data_as(double_p), out.ctypes.data_as(double_p), 0, len(data))
        return out


_INFO = re.compile(r"^feature_infos=(.*)$", re.MULTILINE)


def check_rows(model_text: str, count: int = 256, seed: int = 0, missing: float = 0.15) -> np.ndarray:
    """Rows spread over every feature's range as model.txt records it (``feature_infos``).

    Values uniform in [min, max] and a share of them at the bounds, the categories of categorical
    features, `missing` of them NaN, plus a row all missing, one at every minimum and one at every
    maximum. The rows a compiled artifact is checked on before it serves.
    """
    found = _INFO.search(model_text)
    if found is None:
        raise ModelError("model.txt has no feature_infos line: not a LightGBM text model")
    infos = found.group(1).split(" ")
    rng = np.random.default_rng(seed)
    rows = np.empty((count + 3, len(infos)), dtype=np.float64)
    for j, info in enumerate(infos):
        if info.startswith("["):  # numerical: [min:max]
            lo, hi = (float(v) for v in info[1:-1].split(":"))
            column = rng.uniform(lo, hi, count)
            at_bound = rng.random(count) < 0.1
            column[at_bound] = rng.choice([lo, hi], int(at_bound.sum()))
            rows[:count, j] = column
            rows[count + 1, j], rows[count + 2, j] = lo, hi
        elif info == "none":  # a feature the training data never varied
            rows[:count, j] = rng.normal(size=count)
            rows[count + 1, j], rows[count + 2, j] = -1.0, 1.0
        else:  # categorical: the categories seen, one unseen
            categories = [float(v) for v in info.split(":")] + [
                float(max(int(v) for v in info.split(":")) + 1)
            ]
            rows[:count, j] = rng.choice(categories, count)
            rows[count + 1, j], rows[count + 2, j] = min(categories), max(categories)
    rows[:count][rng.random((count, len(infos))) < missing] = np.nan
    rows[count] = np.nan
    return rows


def differs(compiled: CompiledForest, rows: np.ndarray, expected: np.ndarray) -> float:
    """The largest absolute difference between the compiled scores of `rows` and `expected`."""
    got = compiled.predict(rows)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got - expected), initial=0.0))


def start_background_compile(directory: Path, model_sha256: str, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m antifraud.engine.compiled_model`` for `directory`, niced, output to `log_path`
    (a process of its own, so the caller does not keep the compiler's memory)."""
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", __name__, str(directory), "--expect-sha256", model_sha256, "--nice", "10"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for the service does not kill a compilation half-way
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m antifraud.engine.compiled_model MODEL_DIR...``: compile each model for this host."""
    parser = argparse.ArgumentParser(description="Compile model directories with lleaves for this host.")
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument("--expect-sha256", help="compile only if model.txt still has this digest")
    parser.add_argument("--nice", type=int, default=0, help="lower this process's priority by N first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.nice:
        os.nice(args.nice)
    status = 0
    for directory in args.directories:
        try:
            started = time.perf_counter()
            path = compile_artifact(directory, args.expect_sha256)
            print(f"{directory}: {path} ({time.perf_counter() - started:.1f} s)")
        except (ModelError, OSError) as exc:
            print(f"{directory}: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
