"""lrpt's trainer: the only package that knows about DeepSpeed."""
import os

import torch

# DeepSpeed picks its accelerator at import time; on a machine without CUDA say "cpu" up front
# instead of letting it probe (and warn). An explicit DS_ACCELERATOR always wins.
if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
    os.environ["DS_ACCELERATOR"] = "cpu"
