"""A stand-in accelerator for machines without one: tensors that say they live on another device (`lazy`, which torch
knows but nothing in torch, transformers or accelerate special-cases, as they do `meta`) but hold real CPU data.
Inside `StandInDevice()`, any op that mixes them with CPU tensors (other than 0-d scalars and the cross-device ops
CUDA allows) fails as it would on a GPU, while every value stays real, so a whole training or sampling run can go
through and be checked against the same run on the CPU."""
import threading

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("lazy")  # a device torch knows (autograd runs there) but never special-cases
aten = torch.ops.aten
CROSS_DEVICE = {aten._to_copy.default, aten.copy_.default, aten.index.Tensor, aten.index_put_.default,
                aten.index_put.default, aten._index_put_impl_.default}  # ops CUDA runs with CPU tensors among the inputs


class OnDevice(torch.Tensor):
    "CPU data dressed as a tensor on `DEVICE`."

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(), dtype=data.dtype,
                                                  storage_offset=data.storage_offset(), device=DEVICE,
                                                  requires_grad=data.requires_grad, layout=data.layout)
        out.data_ = data
        return out

    def __tensor_flatten__(self):  # a traceable wrapper subclass, so that `Module.to` swaps parameters in whole
        return ["data_"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return OnDevice(inner["data_"])

    def __repr__(self):
        return f"OnDevice({self.data_!r})"

    def untyped_storage(self):  # real memory, as a CUDA tensor has: safetensors finds tied weights by it
        return self.data_.untyped_storage()

    def data_ptr(self) -> int:
        return self.data_.data_ptr()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _dispatch(func, args: tuple, kwargs: dict):
    "Run `func` on the CPU data, after CUDA's device checks; outputs go on the device when an input did."
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    on_device = any(isinstance(t, OnDevice) for t in tensors)
    if on_device and func not in CROSS_DEVICE and any(not isinstance(t, OnDevice) and t.dim() > 0 for t in tensors):
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{DEVICE} and cpu! ({func})")
    if func is aten.index.Tensor and on_device and not isinstance(args[0], OnDevice):
        raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
    to_device = kwargs.get("device") is not None and torch.device(kwargs["device"]) == DEVICE
    generator = kwargs.get("generator")
    if (to_device or on_device) and generator is not None and generator.device.type == "cpu":  # any random op
        raise RuntimeError(f"Expected a '{DEVICE.type}' device type for generator but found 'cpu'")
    if to_device:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    plain_args, plain_kwargs = tree_map(lambda t: t.data_ if isinstance(t, OnDevice) else t, (args, kwargs))
    out = func(*plain_args, **plain_kwargs)
    if func is aten.copy_.default:  # in place, into the destination's CPU data: the destination stays where it is
        return args[0]
    moved = to_device or (on_device and not (func is aten._to_copy.default and "device" in kwargs))
    return tree_map(lambda t: OnDevice(t) if moved and type(t) is torch.Tensor else t, out)


class _Autocast(torch.autocast):
    "torch.autocast, with the device's autocast taken to be the CPU's (autocast has no `lazy` backend)."

    def __init__(self, device_type: str, *args, **kwargs):
        super().__init__("cpu" if device_type == DEVICE.type else device_type, *args, **kwargs)


class _Constructors(TorchFunctionMode):
    """`torch.tensor(data, device=DEVICE)` and its kin (which build tensors without a dispatched factory op): on the CPU,
    then wrapped; `tolist` reads the data (as from CUDA), `numpy` refuses (as CUDA does)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]) == DEVICE:
            args = tree_map(lambda t: t.data_ if isinstance(t, OnDevice) else t, args)  # a list of 0-d tensors, say
            return OnDevice(func(*args, **{**kwargs, "device": "cpu"}))
        if func is torch.Tensor.tolist and isinstance(args[0], OnDevice):
            return args[0].data_.tolist()
        if func is torch.Tensor.numpy and isinstance(args[0], OnDevice):
            raise TypeError(f"can't convert {DEVICE} device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        return func(*args, **kwargs)


class _OnDeviceDispatch(TorchDispatchMode):
    "Factory ops with `device=DEVICE` make `OnDevice` tensors; every op goes through `_dispatch`."

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


class StandInDevice(_OnDeviceDispatch):
    """Inside, `device=DEVICE` makes `OnDevice` tensors, and `OnDevice` tensors meet CPU tensors as CUDA ones would;
    threads started inside (a streamer's, say) run inside too."""

    def __enter__(self):
        self._autocast, torch.autocast = torch.autocast, _Autocast
        self._run = run = threading.Thread.run

        def run_inside(thread):
            with _Constructors(), _OnDeviceDispatch():
                run(thread)
        threading.Thread.run = run_inside
        self._constructors = _Constructors().__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        torch.autocast, threading.Thread.run = self._autocast, self._run
        super().__exit__(*exc)
        self._constructors.__exit__(*exc)



def install() -> None:
    """Make the stand-in this process's accelerator for good, as CUDA is on a GPU machine: `StandInDevice` stays entered,
    `storyteller.core.get_device()` (and so every module that imports it later: call this first) and accelerate's
    `Accelerator` choose it, and `fit` trains under bf16 autocast (unless ACCELERATE_MIXED_PRECISION says otherwise). A gpu-profile smoke run calls this in each
    chapter's kernel before the chapter's first cell, so the chapter's own cells meet device mixing as on CUDA."""
    import os

    import accelerate

    import storyteller.core as core

    StandInDevice().__enter__()
    core.get_device = lambda prefer=None: torch.device(prefer) if prefer else DEVICE
    os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")  # as `accelerate launch --mixed_precision bf16` does
    accelerate.Accelerator.device = property(lambda self: DEVICE)
