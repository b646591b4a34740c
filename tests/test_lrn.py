import pytest
import torch

from alexnet.nn.lrn import LocalResponseNorm
from fixtures import lrn_formula

MADE = []  # the compiled layers a test made: each must still be compiled at its end


@pytest.fixture(autouse=True)
def compiled_lrn(monkeypatch):
    """These tests check the compiled kernels (the suite runs LRN eagerly, see conftest.py), and fail
    if a layer fell back to its eager kernels (a compiler error is otherwise silent but for one line)."""
    monkeypatch.delenv("ALEXNET_COMPILE", raising=False)
    MADE.clear()
    yield
    assert all(layer.compiled for layer in MADE), "a compiled LRN fell back to its eager kernels"


def LRN(**kwargs) -> LocalResponseNorm:
    """A compiled LRN layer (``LocalResponseNorm(compiled=True)``) whose kernels the fixture checks."""
    layer = LocalResponseNorm(compiled=hasattr(torch, "compile"), **kwargs)
    MADE.append(layer)
    return layer


# One shape for every test: the compiled kernels are specialised per shape, and compiling is most of
# this file's time on a fresh machine.
SHAPE = (2, 12, 5, 5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_matches_the_formula(channels_last):
    a = torch.relu(torch.randn(*SHAPE, dtype=torch.float64)).float() * 40  # large enough to normalise
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    out = LRN()(a)
    torch.testing.assert_close(out, lrn_formula(a.double()).float(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, a / 2**0.75)  # the window term matters at this scale


def test_the_dynamic_kernel_takes_any_batch_size_with_the_same_numbers():
    """Inference's kernel (``dynamic=True``, use/inference.py): one compile for ragged batches."""
    layer = LRN(relu=True, dynamic=True)
    with torch.inference_mode():
        for n in (3, 5):
            z = (torch.randn(n, *SHAPE[1:]) * 30).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(layer(z), lrn_formula(torch.relu(z).double()).float(), atol=1e-5, rtol=1e-5)


def test_training_and_inference_paths_give_the_same_output():
    """With a gradient to come the forward pass keeps the window sum (autograd Function); without one
    it runs a pass that does not write it: same numbers, channels_last kept."""
    z = (torch.randn(*SHAPE) * 30).contiguous(memory_format=torch.channels_last)
    trained = LRN(relu=True)(z.clone().requires_grad_())
    with torch.inference_mode():
        inferred = LRN(relu=True)(z)
    assert trained.grad_fn is not None
    torch.testing.assert_close(inferred, trained.detach(), atol=0, rtol=0)
    assert inferred.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(inferred, lrn_formula(torch.relu(z).double()).float(), atol=1e-5, rtol=1e-5)


def test_lrn_gradient_matches_autograd_of_the_formula():
    a = (torch.relu(torch.randn(*SHAPE)) * 30).requires_grad_()
    b = a.detach().clone().requires_grad_()
    grad = torch.randn(*SHAPE)
    LRN()(a).backward(grad)
    lrn_formula(b).backward(grad)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_lrn_equals_torch_module_and_runs_in_bfloat16():
    a = torch.relu(torch.randn(*SHAPE)) * 20
    torch.testing.assert_close(LRN()(a), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(a), atol=1e-5, rtol=1e-5)
    out = LRN()(a.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), lrn_formula(a), atol=0.05, rtol=0.01)


def test_fused_relu_lrn_equals_relu_then_lrn_with_gradients():
    z = (torch.randn(*SHAPE) * 30).requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    grad = torch.randn(*SHAPE)
    LRN(relu=True)(z).backward(grad)
    lrn_formula(torch.relu(z2)).backward(grad)
    torch.testing.assert_close(z.grad, z2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(LRN(relu=True)(z.detach()), lrn_formula(torch.relu(z.detach())),
                               atol=1e-5, rtol=1e-5)
    assert torch.all(z.grad[z.detach() < 0] == 0)


def test_a_failing_compiler_falls_back_to_the_same_eager_numbers(monkeypatch, capsys):
    from alexnet.nn import lrn

    def broken():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(lrn, "_compiled", broken)
    layer = LocalResponseNorm(compiled=True)
    a = torch.relu(torch.randn(2, 8, 4, 4)) * 20
    torch.testing.assert_close(layer(a), lrn_formula(a), atol=1e-5, rtol=1e-5)
    assert layer.compiled is False and "using eager LRN" in capsys.readouterr().err


def test_the_eager_kernels_run_where_compiling_is_switched_off(monkeypatch):
    from alexnet.nn import lrn

    def never():
        raise AssertionError("compiled kernels asked for")

    monkeypatch.setattr(lrn, "_compiled", never)
    a = torch.relu(torch.randn(2, 8, 4, 4)) * 20
    torch.testing.assert_close(LocalResponseNorm()(a), lrn_formula(a), atol=1e-5, rtol=1e-5)  # compiled=False
    monkeypatch.setenv("ALEXNET_COMPILE", "0")
    layer = LocalResponseNorm(compiled=True)
    torch.testing.assert_close(layer(a), lrn_formula(a), atol=1e-5, rtol=1e-5)
    assert layer.compiled  # the environment switch keeps the setting; it only decides where it holds


def test_bfloat16_gradient_keeps_to_bfloat16_precision():
    """In bf16 the padded tensors of both passes are bf16 (half the memory traffic), the sums fp32:
    the gradient stays within bf16's rounding of the exact one."""
    a = (torch.relu(torch.randn(*SHAPE)) * 30).bfloat16().contiguous(memory_format=torch.channels_last)
    _, grad, exact = _gradient_and_formulas(a, LRN())
    assert grad.dtype == torch.bfloat16 and grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad.double(), exact, atol=0.02, rtol=0.02)


def _gradient_and_formulas(a: torch.Tensor, layer: LocalResponseNorm) -> tuple[torch.Tensor, ...]:
    """``layer`` on ``a`` (in its dtype) and its gradient for a random upstream gradient, with the float64
    formula's gradient for the same upstream one."""
    upstream = torch.randn(*a.shape).to(a.dtype)
    x = a.clone().requires_grad_()
    out = layer(x)
    out.backward(upstream)
    exact = a.double().requires_grad_()
    lrn_formula(exact).backward(upstream.double())
    return out, x.grad, exact.grad


def test_a_command_lets_inductor_take_the_vector_extensions_from_the_cpu_flags(monkeypatch):
    """The cold-cache check that compiles a test program per vector extension (9.6 s) is skipped in the
    commands' processes (set where a command starts), unless TORCHINDUCTOR_VEC_ISA_OK says what to do;
    importing the package changes nothing."""
    import os
    import subprocess
    import sys

    from alexnet.runtime import configure_process

    monkeypatch.setenv("TORCHINDUCTOR_VEC_ISA_OK", "0")
    configure_process()
    assert os.environ["TORCHINDUCTOR_VEC_ISA_OK"] == "0"
    monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK")
    configure_process()
    assert os.environ["TORCHINDUCTOR_VEC_ISA_OK"] == "1"
    probe = "import os, alexnet, alexnet.nn.lrn; print(os.environ.get('TORCHINDUCTOR_VEC_ISA_OK'))"
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_VEC_ISA_OK"}
    seen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip()
    assert seen == "None"


def test_float16_activities_above_256_keep_their_window_sum_finite():
    """fp16 squares overflow above 256 (65504): the padded tensors and the saved window sum are fp32 for
    fp16 input, so the output and the gradient stay those of the formula. (Eager kernels, same code.)"""
    a = (torch.relu(torch.randn(*SHAPE)) * 400 + 300 * (torch.rand(*SHAPE) > 0.5)).half()
    out, grad, exact = _gradient_and_formulas(a, LocalResponseNorm())
    assert out.dtype == torch.float16 and torch.isfinite(grad).all()
    torch.testing.assert_close(out.double(), lrn_formula(a.double()), atol=0.05, rtol=0.01)
    torch.testing.assert_close(grad.double(), exact, atol=0.02, rtol=0.02)


def test_a_whole_network_compile_traces_the_lrn_without_a_graph_break():
    """Inside a whole-network torch.compile (``alexnet bench model --compile``) a layer's own compiled kernel
    would break the graph at every LRN; it traces the eager kernel instead, compiled or not."""
    import torch._dynamo

    lrn = LocalResponseNorm(relu=True, compiled=True)
    x = torch.randn(2, 8, 5, 5)
    explained = torch._dynamo.explain(lambda t: lrn(t) * 2)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_the_formula_on_numbers_worked_by_hand():
    a = torch.tensor([3.0, 0.0, 4.0, 0.0, 0.0, 0.0, 12.0], dtype=torch.float64).view(1, 7, 1, 1)
    b = lrn_formula(a).flatten()
    # channel 2's window is channels 0..4: 9 + 16 = 25; channel 6's is 4..6 (cut at the edge): 144
    assert b[2].item() == 4.0 / (2 + 1e-4 / 5 * 25) ** 0.75 and b[6].item() == 12.0 / (2 + 1e-4 / 5 * 144) ** 0.75
    assert b[1].item() == 0.0 and lrn_formula(a, k=1.0)[0, 0].item() == 3.0 / (1 + 1e-4 / 5 * 25) ** 0.75
