"""flashcomm-compile: the Flash Communication low-bit two-step all-reduce as a torch.compile pass.

    torch.compile(model, backend="flashcomm", options={"reduce_bits": 4})
    torch.compile(model, backend=flashcomm_compile.backend(reduce_bits=4))
    @flashcomm_compile.compile(reduce_bits=4, mode="reduce-overhead")
    flashcomm_compile.inspect(model, x, world_size=2)   # what the pass would do, without GPUs or peers
    flashcomm_compile.evaluate("mypackage.models:make_tp_model", world_size=2)  # its error on the outputs, per config
"""

from .collective import two_step_all_reduce
from .config import FlashCommConfig
from .decorator import compile
from .dynamo_backend import FlashCommBackend, backend, register_by_name
from .evaluation import evaluate
from .inspection import inspect

register_by_name()

__all__ = ["FlashCommBackend", "FlashCommConfig", "backend", "compile", "evaluate", "inspect", "two_step_all_reduce"]
