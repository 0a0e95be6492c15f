"""Stub ``pycuda.driver``: the calls tenantd's TensorRT runtime makes (pycuda's documented API:
``init``, ``Device(i).retain_primary_context()``, ``Context.pop``, ``Stream``, ``mem_alloc``,
``pagelocked_empty``, ``memcpy_htod_async``/``memcpy_dtoh_async``), with "device" memory held in
``MEMORY`` by address and the bytes allocated counted in ``ALLOCATED``."""

import itertools

import numpy as np

MEMORY = {}  # address -> bytearray
ALLOCATED = [0]
_ADDRESSES = itertools.count(0x7F0000000000, 0x100000)


class Error(Exception):
    pass


def init():
    pass


class _Context:
    def push(self):
        pass


class Context:
    @staticmethod
    def pop():
        pass


class Device:
    @staticmethod
    def count():
        return 1

    def __init__(self, index):
        self.index = index

    def retain_primary_context(self):
        return _Context()


class Stream:
    handle = 1

    def synchronize(self):
        pass


class DeviceAllocation:
    def __init__(self, nbytes):
        self.address = next(_ADDRESSES)
        MEMORY[self.address] = bytearray(nbytes)
        ALLOCATED[0] += nbytes

    def __int__(self):
        return self.address

    def free(self):
        ALLOCATED[0] -= len(MEMORY.pop(self.address))


def mem_alloc(nbytes):
    return DeviceAllocation(nbytes)


def pagelocked_empty(size, dtype):
    return np.empty(size, dtype)


def memcpy_htod_async(dest, src, stream=None):
    MEMORY[int(dest)][:] = np.ascontiguousarray(src).tobytes()


def memcpy_dtoh_async(dest, src, stream=None):
    dest[...] = np.frombuffer(bytes(MEMORY[int(src)]), dest.dtype).reshape(dest.shape)
