"""Device buffers and a stream, through whichever CUDA binding the device has.

One small interface over two libraries, because Jetson images differ: JetPack 5 (TensorRT 8.5) ships
samples on pycuda, JetPack 6+ (TensorRT 8.6/10.x) on cuda-python (`from cuda import cudart`, and from
cuda-python 12.9 `from cuda.bindings import runtime`) — TRT `samples/python/common.py` /
`common_runtime.py` of each release, edge.md §1.7. Imported only by the TensorRT runner.
"""
from __future__ import annotations

import ctypes
import importlib
from typing import Any

import numpy as np


class CudaError(RuntimeError):
    pass


class _CudaPython:
    """cuda-python runtime API: every call returns (error, *results) (TRT common_runtime.py cuda_call)."""

    def __init__(self, module_name: str) -> None:
        if module_name == "cuda.bindings":
            self.rt = importlib.import_module("cuda.bindings.runtime")
        else:
            self.rt = importlib.import_module("cuda.cudart")
        self.name = f"cuda-python ({module_name})"

    def _call(self, res: Any) -> Any:
        err, rest = res[0], res[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(max(1, int(nbytes)))))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr))

    def host_empty(self, count: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
        """Page-locked host array (async copies need it to be truly async)."""
        dtype = np.dtype(dtype)
        ptr = int(self._call(self.rt.cudaMallocHost(max(1, count * dtype.itemsize))))
        arr = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(np.ctypeslib.as_ctypes_type(dtype))), (count,))
        return arr, ptr

    def free_host(self, ptr: int) -> None:
        self._call(self.rt.cudaFreeHost(ptr))

    def stream(self) -> int:
        return int(self._call(self.rt.cudaStreamCreate()))

    def destroy_stream(self, stream: int) -> None:
        self._call(self.rt.cudaStreamDestroy(stream))

    def h2d(self, dst: int, src: np.ndarray, nbytes: int, stream: int) -> None:
        self._call(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def d2h(self, dst: np.ndarray, src: int, nbytes: int, stream: int) -> None:
        self._call(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def sync(self, stream: int) -> None:
        self._call(self.rt.cudaStreamSynchronize(stream))

    def push(self) -> None:  # the runtime API binds the primary context itself
        pass

    def pop(self) -> None:
        pass


class _PyCuda:
    """pycuda driver API on the device's primary context (the one TensorRT's runtime API uses), pushed
    around each call because pycuda contexts are per thread and requests come from many threads."""

    def __init__(self) -> None:
        self.drv = importlib.import_module("pycuda.driver")
        self.drv.init()
        self.ctx = self.drv.Device(0).retain_primary_context()
        self.name = "pycuda"
        self._allocs: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def push(self) -> None:
        self.ctx.push()

    def pop(self) -> None:
        self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(max(1, int(nbytes)))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._allocs.pop(int(ptr)).free()

    def host_empty(self, count: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
        arr = self.drv.pagelocked_empty(count, np.dtype(dtype))
        self._allocs[arr.ctypes.data] = arr
        return arr, arr.ctypes.data

    def free_host(self, ptr: int) -> None:
        self._allocs.pop(int(ptr), None)

    def stream(self) -> int:
        s = self.drv.Stream()
        self._streams[int(s.handle)] = s
        return int(s.handle)

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(int(stream), None)

    def h2d(self, dst: int, src: np.ndarray, nbytes: int, stream: int) -> None:
        self.drv.memcpy_htod_async(dst, src.reshape(-1).view(np.uint8)[:nbytes], self._streams[stream])

    def d2h(self, dst: np.ndarray, src: int, nbytes: int, stream: int) -> None:
        self.drv.memcpy_dtoh_async(dst.reshape(-1).view(np.uint8)[:nbytes], src, self._streams[stream])

    def sync(self, stream: int) -> None:
        self._streams[stream].synchronize()


def load_cuda(preference: tuple[str, ...]) -> _CudaPython | _PyCuda:
    """The first binding of `preference` that imports ("cuda.bindings", "cuda", "pycuda")."""
    errors = []
    for name in preference:
        try:
            if name == "pycuda":
                return _PyCuda()
            importlib.import_module("cuda.bindings.runtime" if name == "cuda.bindings" else "cuda.cudart")
            return _CudaPython(name)
        except Exception as exc:  # noqa: BLE001 - try the next binding, report all at the end
            errors.append(f"{name}: {exc}")
    raise ImportError("no CUDA Python binding found; install cuda-python (pip install 'floatedge[tensorrt]') "
                      f"or pycuda ({'; '.join(errors)})")
