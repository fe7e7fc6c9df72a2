"""selected_logprobs: the log-softmax at the sampled tokens, without float32 copies of the logits."""

import pytest
import torch

import masa.update
from masa.update import selected_logprobs


def _reference(logits: torch.Tensor, targets: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    scaled = logits.float() / temperatures[..., None]
    return scaled.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


def _case(dtype: torch.dtype, vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 7, vocab, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (3, 7), generator=g)
    temperatures = torch.tensor([0.7, 1.0, 1.3])[:, None].expand(3, 7)
    return logits, targets, temperatures


@pytest.mark.parametrize("chunk_elements", [1 << 24, 120])  # one chunk; two rows per chunk
def test_values_and_gradient_match_the_plain_computation(monkeypatch, chunk_elements):
    monkeypatch.setattr(masa.update, "LOGPROB_CHUNK_ELEMENTS", chunk_elements)
    logits, targets, temperatures = _case(torch.float64)
    weights = torch.randn(3, 7, dtype=torch.float64)
    ours = selected_logprobs(logits, targets, temperatures)
    (grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    plain = _reference(logits.double(), targets, temperatures.double())
    (plain_grad,) = torch.autograd.grad((plain * weights).sum(), logits)
    torch.testing.assert_close(ours.double(), plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, plain_grad, atol=1e-6, rtol=1e-5)


def test_gradcheck_in_double():
    logits, targets, temperatures = _case(torch.float64, vocab=6)
    forward = masa.update._SelectedLogprobs.apply
    assert torch.autograd.gradcheck(
        lambda x: forward(x.reshape(-1, 6), targets.reshape(-1), temperatures.reshape(-1).double()),
        (logits,),
    )


def test_bf16_logits_give_bf16_gradients_equal_to_the_plain_path():
    logits, targets, temperatures = _case(torch.bfloat16)
    ours = selected_logprobs(logits, targets, temperatures)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    plain = _reference(logits, targets, temperatures)
    (plain_grad,) = torch.autograd.grad(plain.sum(), logits)
    assert ours.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, plain_grad, atol=1e-2, rtol=1e-2)


def test_backward_keeps_only_the_logits_themselves():
    """The plain form saves float32 (tokens, vocabulary) tensors for its backward; this saves none."""
    logits, targets, temperatures = _case(torch.bfloat16, vocab=4096)
    saved: list[torch.Tensor] = []

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        selected_logprobs(logits, targets, temperatures)
    vocab_sized = [t for t in saved if t.shape[-1] == 4096]
    assert vocab_sized and all(t.dtype == torch.bfloat16 for t in vocab_sized)
    assert sum(t.numel() for t in vocab_sized) == logits.numel()

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        _reference(logits, targets, temperatures)
    assert any(t.dtype == torch.float32 and t.shape[-1] == 4096 for t in saved)
