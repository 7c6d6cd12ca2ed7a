"""PT2E static int8 with torchao's x86 Inductor quantizer, shared by ``compile-int8``
(torch.compile at run time) and the ``aoti`` int8 artifact (compiled once, cached).

In torch 2.14 PT2E lives in ``torchao``, not ``torch.ao``. Weights are quantized per
channel, activations per tensor, calibrated on the batches given (``densebench.calibration``).
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch

QUANTIZER = "X86InductorQuantizer (static, per-channel weights)"


def torchao_installed() -> bool:
    """Whether torchao can be imported, without importing it (that takes seconds: every
    command that asks whether an int8 variant can run would pay them)."""
    return importlib.util.find_spec("torchao") is not None


def require_torchao():
    """torchao's PT2E pieces, or None when torchao is not installed."""
    import logging

    # torchao 0.18 registers an Enum with pytree at import, and torch 2.14 logs a deprecation
    # warning for it on stderr in every command that looks at torchao: not the user's concern
    pytree_log = logging.getLogger("torch.utils._pytree")
    hush = _DropMessage("is an Enum subclass and is now natively supported")
    pytree_log.addFilter(hush)
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        return None
    finally:
        pytree_log.removeFilter(hush)
    return xiq, prepare_pt2e, convert_pt2e


class _DropMessage:
    def __init__(self, text: str):
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()


def quantize_pt2e(module: torch.nn.Module, batches: list[torch.Tensor],
                  dynamic_shapes: dict | tuple | None = None) -> torch.fx.GraphModule:
    """``module`` exported (with ``dynamic_shapes``, torch.export's), observed on
    ``batches`` and converted to int8 (Q/DQ pairs the Inductor int8 passes fuse when
    compiled with freezing)."""
    xiq, prepare_pt2e, convert_pt2e = require_torchao()
    # quantized in fp32 even under a bf16 autocast (int8-mixed-bf16 runs the compiled
    # model under autocast, as the session does)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        exported = torch.export.export(module, (batches[0],),
                                       dynamic_shapes=dynamic_shapes).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for x in batches:
            prepared(x)
        with without_qat_folding():
            return convert_pt2e(prepared)


@contextlib.contextmanager
def without_qat_folding(skip: bool = True):
    """``convert_pt2e`` runs torchao's QAT conv-BatchNorm folding on any model with a
    BatchNorm left in it: it exports 96 pattern graphs (twice where CUDA is available), 60
    of the 65 s of converting densenet121 on a Zen 3 EPYC, and finds nothing in a model
    prepared for post-training quantization: ``prepare_pt2e`` already folded every
    BatchNorm that follows a convolution, and DenseNet's others follow a concatenation.
    Skipped here (a test checks the converted model is the same); where torchao no longer
    has the function, nothing is changed."""
    import torchao.quantization.pt2e.quantize_pt2e as qp

    original = getattr(qp, "_fold_conv_bn_qat", None)
    if not skip or original is None:
        yield
        return
    qp._fold_conv_bn_qat = lambda m: m
    try:
        yield
    finally:
        qp._fold_conv_bn_qat = original
