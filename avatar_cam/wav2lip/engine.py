"""`Wav2LipEngine`: the Wav2Lip generator on OpenVINO, loaded from a published checkpoint.

First start: read the checkpoint safely, build the graph, save it as IR in the user's cache dir.
Later starts: compile that IR straight from disk, with OpenVINO's compiled-model cache (CACHE_DIR), so
the checkpoint is not even opened. Both caches are safe to delete; they are rebuilt.

Threading: an engine has one generator request per inference stream (`streams`, 1 unless asked). As many
threads as there are streams may call `infer_encoded` at once (an offline render keeps two batches going, one
per core); more wait for a free request. `encode_face` runs on one thread at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import logging
import os
import queue
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov

from avatar_cam import paths
from avatar_cam.errors import CheckpointError, EngineError
from avatar_cam.wav2lip.checkpoint import CHECKPOINT_HINT, load_checkpoint
from avatar_cam.wav2lip.graph import GRAPH_VERSION, build_face_encoder, build_generator


def _parts(first_row: int) -> dict[str, Callable[[dict[str, np.ndarray]], ov.Model]]:
    """The two networks we compile (face encoder, generator), by the name their IR files carry."""
    return {f"face_encoder-from{first_row}": functools.partial(build_face_encoder, first_row=first_row),
            f"generator-from{first_row}": functools.partial(build_generator, first_row=first_row)}

log = logging.getLogger(__name__)

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
PRECISIONS = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}  # ours -> OpenVINO's capability names


@dataclass
class LoadReport:
    """How the engine came to be: what was cached, and how long each step took (seconds)."""

    ir_cached: bool = False
    read_s: float = 0.0
    convert_s: float = 0.0
    compile_s: float = 0.0
    device: str = ""
    precision: str = ""
    threads: int | None = None  # OpenVINO CPU threads per inference (None: its default)
    streams: int = 1  # inferences that can run at once (each on its own share of the cores); asked 0: OpenVINO's pick
    notes: list[str] = field(default_factory=list)


def _convert(path: Path, parts: dict, xmls: dict[str, Path], report: LoadReport) -> dict[str, ov.Model | str]:
    """Read the checkpoint and build each part, saving it as IR; returns what to compile (the IR file when saved)."""
    t0 = time.perf_counter()
    weights = load_checkpoint(path).state_dict
    report.read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    models: dict[str, ov.Model | str] = {}
    for part, build in parts.items():
        models[part] = build(weights)
        _save_ir_atomically(models[part], xmls[part])
        # Compile from the saved file when we have it: that is what the compiled-model cache keys on.
        if xmls[part].exists():
            models[part] = str(xmls[part])
    report.convert_s = time.perf_counter() - t0
    return models


def _return_freed_memory() -> None:
    """Hand the heap that conversion freed back to the system (glibc keeps ~50 MB of it otherwise, for the
    daemon's whole life). A no-op where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _tensor_like(array: np.ndarray) -> ov.Tensor:
    """A float32 tensor of OpenVINO's own memory, holding a copy of `array`."""
    tensor = ov.Tensor(ov.Type.f32, ov.Shape(list(array.shape)))
    tensor.data[...] = array
    return tensor


def _core(cache: Path | None) -> ov.Core:
    core = ov.Core()
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
    return core


def supported_precisions(device: str = "CPU", core: ov.Core | None = None) -> list[str]:
    """Our precision names the device can run, f32 first."""
    core = core or ov.Core()
    try:
        caps = set(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:
        return ["f32"]
    return [name for name, cap in PRECISIONS.items() if cap in caps or name == "f32"]


def _check_choice(device: str, precision: str, core: ov.Core) -> None:
    if device not in DEVICES:
        raise EngineError(f"unknown device {device!r}", hint=f"use one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if device != "AUTO" and device not in core.available_devices:
        raise EngineError(
            f"OpenVINO sees no {device} device here (it sees: {', '.join(core.available_devices) or 'none'})",
            hint="use --device CPU, or install the GPU/NPU driver for your Intel hardware",
        )
    if device != "AUTO" and precision not in supported_precisions(device, core):
        raise EngineError(
            f"the {device} cannot run {precision} (it supports {', '.join(supported_precisions(device, core))})",
            hint="use --precision f32",
        )


def _ir_key(checkpoint: Path) -> str:
    # Path, size and mtime identify the file without hashing 400 MB on every start.
    st = checkpoint.stat()
    ident = f"{checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}|graph{GRAPH_VERSION}|ov{ov.get_version()}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _save_ir_atomically(model: ov.Model, xml: Path) -> None:
    """Write .xml/.bin under temporary names, then rename: a full disk or a crash never leaves half an IR."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_xml = tempfile.mkstemp(prefix=".tmp-", suffix=".xml", dir=xml.parent)
    os.close(fd)
    tmp_xml_p = Path(tmp_xml)
    tmp_bin_p = tmp_xml_p.with_suffix(".bin")
    try:
        ov.save_model(model, tmp_xml_p, compress_to_fp16=False)
        os.replace(tmp_bin_p, xml.with_suffix(".bin"))
        os.replace(tmp_xml_p, xml)
    except (OSError, RuntimeError) as exc:
        for p in (tmp_xml_p, tmp_bin_p):
            p.unlink(missing_ok=True)
        log.warning("could not cache the converted model in %s (%s); the next start will convert again", xml.parent, exc)


class _GeneratorRequest:
    """One generator infer request and what is bound to it (one thread at a time: the engine hands it out)."""

    def __init__(self, request: ov.InferRequest):
        self.request = request
        self.bound: list[np.ndarray] | None = None  # the face features the inputs point at
        self.mel_inputs: dict[int, ov.Tensor] = {}  # batch size -> the mel input tensor for it
        self.mel_batch = 0  # the batch size whose mel tensor the input is now

    def run(self, mel: np.ndarray, features: list[np.ndarray]) -> np.ndarray:
        if features is not self.bound:
            # A still face is bound once instead of copied in every frame (~1 MB). The inputs are tensors of
            # OpenVINO's own: pointing the request at numpy's memory instead (shared_memory=True) made about one
            # inference a minute take 50-120 ms instead of 14 (5-minute soaks, 3 runs against 3).
            for i, f in enumerate(features, start=1):
                self.request.set_input_tensor(i, _tensor_like(f))
            self.bound = features
        # The mel is copied into the input tensor of its batch size (5 KB a frame).
        batch = mel.shape[0]
        if batch != self.mel_batch:
            self.mel_inputs.setdefault(batch, _tensor_like(mel))
            self.request.set_input_tensor(0, self.mel_inputs[batch])
            self.mel_batch = batch
        self.mel_inputs[batch].data[...] = mel
        self.request.infer()
        return self.request.get_output_tensor(0).data.copy()


class Wav2LipEngine:
    """The Wav2Lip generator compiled for one OpenVINO device, as two networks: the face encoder (which a
    still portrait needs once) and the generator (audio encoder + decoder, run for every frame).

    `infer(mel, face)`: mel (B,1,80,16) float32, face (B,6,96,96) float32 BGR/255 (channels 0-2 the crop with
    its lower half zeroed, 3-5 the reference crop) -> (B,3,96-first_row,96) float32 BGR in [0,1]: rows
    [first_row, 96) of the generated face. By default (`first_row=0`) the whole published network, layer for
    layer: (B,3,96,96). The mouth-rows form is asked for explicitly, `first_row=MOUTH_FIRST_ROW` (what the live
    camera runs, see `avatar_cam.lipsync.wav2lip`): only the rows the compositor blends, with the face's share of
    each decoder convolution precomputed (see `build_generator`), the published network's numbers to float
    rounding for about half of its per-frame work.
    `encode_face(face)` + `infer_encoded(mel, features)`: the same result, with the face work done once.
    """

    def __init__(self, compiled: dict[str, ov.CompiledModel], report: LoadReport, first_row: int = 0):
        self._encoder = compiled[f"face_encoder-from{first_row}"].create_infer_request()
        generator = compiled[f"generator-from{first_row}"]
        self._free: queue.LifoQueue[_GeneratorRequest] = queue.LifoQueue()  # the requests no thread is using
        for _ in range(max(1, report.streams)):
            self._free.put(_GeneratorRequest(generator.create_infer_request()))
        self.report = report
        self.first_row = first_row

    @property
    def device(self) -> str:
        return self.report.device

    @property
    def precision(self) -> str:
        return self.report.precision

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "CPU", precision: str = "f32", cache_dir: str | Path | None = None,
        first_row: int = 0, threads: int | None = None, streams: int = 1,
    ) -> Wav2LipEngine:
        """Load a Wav2Lip checkpoint (`wav2lip.pth` / `wav2lip_gan.pth`), converting it once and caching the result.

        `first_row`: 0 for the whole 96x96 face; `MOUTH_FIRST_ROW` for the live camera's mouth-rows form.
        `threads`: OpenVINO's CPU threads per inference (None: its default, one per core).
        `streams` other than 1: that many inferences at once, each with its share of the cores (OpenVINO's
        throughput mode, for batches run side by side as an offline render does; 0: as many as OpenVINO finds
        best for the machine; `threads` is then ignored). `report.streams` says how many there are."""
        path = Path(path)
        cache = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
        core = _core(cache / "compiled")
        _check_choice(device, precision, core)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}", hint=CHECKPOINT_HINT)
        key = _ir_key(path)
        parts = _parts(first_row)
        xmls = {part: cache / "ir" / f"wav2lip-{key}-{part}.xml" for part in parts}
        if all(x.exists() and x.with_suffix(".bin").exists() for x in xmls.values()):
            try:
                return cls._compile(core, {p: str(x) for p, x in xmls.items()}, device, precision,
                                    LoadReport(ir_cached=True, streams=streams), first_row, threads)
            except EngineError as exc:
                # A damaged IR or compiled-model cache must not stop the camera: drop both and convert again.
                log.warning("%s; rebuilding it from the checkpoint", exc)
                for x in xmls.values():
                    x.unlink(missing_ok=True)
                    x.with_suffix(".bin").unlink(missing_ok=True)
                shutil.rmtree(cache / "compiled", ignore_errors=True)
                core = _core(cache / "compiled")
        report = LoadReport(streams=streams)
        models = _convert(path, parts, xmls, report)
        engine = cls._compile(core, models, device, precision, report, first_row, threads)
        del models
        _return_freed_memory()
        return engine

    @classmethod
    def from_state_dict(cls, weights: dict[str, np.ndarray], device: str = "CPU", precision: str = "f32",
                        first_row: int = 0) -> Wav2LipEngine:
        """Build from weights already in memory (validated, float32); nothing is cached."""
        core = _core(None)
        _check_choice(device, precision, core)
        report = LoadReport()
        t0 = time.perf_counter()
        models = {part: build(weights) for part, build in _parts(first_row).items()}
        report.convert_s = time.perf_counter() - t0
        return cls._compile(core, models, device, precision, report, first_row)

    @classmethod
    def _compile(
        cls, core: ov.Core, models: dict[str, ov.Model | str], device: str, precision: str, report: LoadReport,
        first_row: int, threads: int | None = None,
    ) -> Wav2LipEngine:
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if report.streams != 1:
            # Streams of one or a few threads each never wait for each other, where one inference's threads meet
            # at every layer: on two busy cores, two streams of one thread ran batches ~10% faster for ~10%
            # less CPU a frame (BENCHMARKS.md, session 5). 0: as many as OpenVINO finds best for the machine.
            config = {"PERFORMANCE_HINT": "THROUGHPUT"}
            if report.streams > 1:
                config["NUM_STREAMS"] = str(report.streams)
        elif threads is not None and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if device != "AUTO":
            # OpenVINO would silently pick bf16 on CPUs that have it; that changes the picture visibly, so we ask.
            config["INFERENCE_PRECISION_HINT"] = precision
        t0 = time.perf_counter()
        compiled: dict[str, ov.CompiledModel] = {}
        for part, model in models.items():
            try:
                compiled[part] = core.compile_model(model, device, config)
            except RuntimeError as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if isinstance(model, str):
                    raise EngineError(f"OpenVINO could not load the cached model {model} ({first_line})") from None
                raise EngineError(f"OpenVINO could not compile Wav2Lip for {device}: {first_line}") from None
        generator = compiled[f"generator-from{first_row}"]
        report.compile_s = time.perf_counter() - t0
        if report.streams != 1:
            try:
                report.streams = max(1, int(generator.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            except RuntimeError:
                report.streams = max(1, report.streams)
        try:
            report.device = ",".join(generator.get_property("EXECUTION_DEVICES"))
        except RuntimeError:
            report.device = device
        try:
            used = generator.get_property("INFERENCE_PRECISION_HINT")
            report.precision = used.get_type_name() if isinstance(used, ov.Type) else str(used).lower()
        except RuntimeError:
            report.precision = precision
        if report.precision != precision:
            report.notes.append(f"asked for {precision}, {report.device} runs {report.precision}")
        log.info(
            "Wav2Lip on %s at %s (IR %s, compile %.2fs)%s",
            report.device, report.precision, "cached" if report.ir_cached else "built", report.compile_s,
            "; " + "; ".join(report.notes) if report.notes else "",
        )
        report.threads = threads
        return cls(compiled, report, first_row)

    def encode_face(self, face: np.ndarray) -> list[np.ndarray]:
        """face (B,6,96,96) -> what the generator takes from the face (seven arrays); B=1 serves any batch in
        `infer_encoded`, which binds them to the generator once per list (a new face: a new list)."""
        face = np.ascontiguousarray(face, dtype=np.float32)
        if face.ndim != 4 or face.shape[1:] != (6, 96, 96):
            raise ValueError(f"face must be (B,6,96,96), got {face.shape}")
        self._encoder.infer([face])
        return [self._encoder.get_output_tensor(i).data.copy() for i in range(7)]

    def infer_encoded(self, mel: np.ndarray, features: list[np.ndarray]) -> np.ndarray:
        mel = np.ascontiguousarray(mel, dtype=np.float32)
        if mel.ndim != 4 or mel.shape[1:] != (1, 80, 16):
            raise ValueError(f"mel must be (B,1,80,16), got {mel.shape}")
        if features[0].shape[0] not in (1, mel.shape[0]):
            raise ValueError(f"mel and face batch sizes differ: {mel.shape[0]} vs {features[0].shape[0]}")
        request = self._free.get()
        try:
            return request.run(mel, features)
        finally:
            self._free.put(request)

    def infer(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        mel = np.asarray(mel)
        if np.ndim(face) == 4 and mel.ndim == 4 and mel.shape[0] != np.shape(face)[0]:
            raise ValueError(f"mel and face batch sizes differ: {mel.shape[0]} vs {np.shape(face)[0]}")
        return self.infer_encoded(mel, self.encode_face(face))
