"""lrpt's trainer: the only package that knows about DeepSpeed."""
import logging
import os

import torch

# DeepSpeed picks its accelerator at import time; on a machine without CUDA say "cpu" up front
# instead of letting it probe (and warn). An explicit DS_ACCELERATOR always wins.
if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
    os.environ["DS_ACCELERATOR"] = "cpu"


class _NoHubKernelWarning(logging.Filter):
    """bitsandbytes (on CPUs with AVX512-BF16) tries to fetch a faster 4-bit kernel from the HF hub at
    import, through the optional `kernels` package, and warns at every start when it cannot; it then
    uses its own CPU kernel, which is the one lrpt is tested with. Drop that one message, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"  # the module that logs it, with logging.getLogger(__name__)
logging.getLogger(BNB_CPU_LOGGER).addFilter(_NoHubKernelWarning())
