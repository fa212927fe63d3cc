"""Tests of the SimSID/HCASC generator, its memories and the discriminator (CPU, small configurations)."""

from __future__ import annotations

import collections
import copy
import os

import pytest
import torch
import torch.nn.functional as F

import scripts.blocks
from scripts.blocks import SEResBlock, UpBlock, binary_position_code, patchify, unpatchify
from scripts.memory import DecoderMemory, SpaceAwareMemoryQueue, hard_shrink, topk_shrink
from scripts.networks import Discriminator, InpaintBlock, SimSIDGenerator, neighbour_index

SMALL = dict(features_root=8, num_slots=16, mem_num_slots=12, inpaint_channels=16, num_heads=2, se_reduction=4)


def small_generator(img_size: int = 64, num_patch: int = 2, seed: int = 0, **kwargs) -> SimSIDGenerator:
    torch.manual_seed(seed)
    return SimSIDGenerator(img_size=img_size, num_patch=num_patch, **{**SMALL, **kwargs})


def images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 1e-12, name: str = ""
) -> None:
    """``max|actual - expected| <= rtol * max|expected| + atol``: a tolerance that scales with the tensor's magnitude.

    Elementwise tolerances judge the CPU's summation order (AVX2 and AVX-512 hosts sum in different orders) on the
    entries far below the tensor's scale; this judges the tensor as a whole, and still fails on a wrong or missing term.
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().double(), expected.detach().double()
    error, scale = float((actual - expected).abs().max()), float(expected.abs().max())
    assert error <= rtol * scale + atol, f"{name}: max abs difference {error:.3g} at scale {scale:.3g} (rtol {rtol:g})"


def reference_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Plain top-k shrinkage of one row block: softmax, keep the k largest by sorting, renormalise."""
    soft = torch.softmax(logits, dim=-1)
    order = soft.argsort(dim=-1, descending=True)
    keep = torch.zeros_like(soft, dtype=torch.bool)
    for row in range(soft.shape[0]):
        keep[row, order[row, :k]] = True
    kept = torch.where(keep, soft, torch.zeros_like(soft))
    return kept / kept.sum(-1, keepdim=True)


# ---------------------------------------------------------------- shapes and construction


@pytest.mark.parametrize("img_size", [64, 128, 256])
@pytest.mark.parametrize("num_patch", [2, 4])
def test_generator_output_shapes(img_size, num_patch):
    gen = small_generator(img_size, num_patch)
    x = images(2, img_size)
    positions = num_patch**2
    bottleneck = img_size // num_patch // 16
    gen.train()
    out = gen(x)
    assert out["recon"].shape == (2, 1, img_size, img_size)
    assert out["teacher_recon"].shape == (2, 1, img_size, img_size)
    assert out["queries"].shape == (2, positions, 16 * bottleneck * bottleneck)
    assert not out["queries"].requires_grad
    assert len(out["student_features"]) == len(out["teacher_features"]) == 4
    for s, t, channels in zip(out["student_features"], out["teacher_features"], (64, 32, 16, 8)):
        assert s.shape == t.shape and s.shape[1] == channels
    assert 0.0 <= float(out["recon"].min()) and float(out["recon"].max()) <= 1.0
    gen.eval()
    with torch.no_grad():
        evaluated = gen(x)
    assert set(evaluated) == {"recon"}
    assert evaluated["recon"].shape == (2, 1, img_size, img_size)


def test_generator_without_teacher():
    gen = small_generator(dist=False).train()
    out = gen(images(2, 64))
    assert "teacher_recon" not in out and out["teacher_features"] == []
    assert not any(name.startswith("teacher") for name, _ in gen.named_parameters())


def test_reference_parameter_count():
    """ZhangLab settings: 44.5 M generator parameters, as the published model (within 2 %)."""
    gen = SimSIDGenerator()
    count = sum(p.numel() for p in gen.parameters())
    assert abs(count - 44.5e6) / 44.5e6 < 0.02
    # the decoder memories are 4 windows x 200 slots of 256*4*4 and 128*8*8 values
    assert gen.decoder.memories[0].memory.shape == (4, 200, 4096)
    assert gen.decoder.memories[1].memory.shape == (4, 200, 8192)
    assert gen.inpaint.queue.memory.shape == (4, 200, 2048)


def test_invalid_sizes_rejected():
    with pytest.raises(ValueError):
        SimSIDGenerator(img_size=100, **SMALL)
    with pytest.raises(ValueError):
        SimSIDGenerator(img_size=64, ops=("concat", "none"), **SMALL)
    with pytest.raises(ValueError):
        DecoderMemory(num_memory=3, num_slots=4, channels=2, spatial_size=(4, 4))


@pytest.mark.parametrize("img_size", [64, 128, 256])
def test_discriminator_shapes(img_size):
    torch.manual_seed(0)
    disc = Discriminator(img_size=img_size)
    assert disc.classifier.in_features == 128 * (img_size // 32) ** 2
    assert disc(images(3, img_size)).shape == (3, 1)
    # the first layer has no BatchNorm, all the others have one
    norms = [any(isinstance(m, torch.nn.BatchNorm2d) for m in layer.modules()) for layer in disc.features]
    assert norms == [False, True, True, True, True]


# ---------------------------------------------------------------- patches, neighbourhood, position code


@pytest.mark.parametrize("num_patch", [2, 4])
def test_patchify_layout_and_roundtrip(num_patch):
    x = torch.randn(2, 3, 16, 16)
    patches = patchify(x, num_patch)
    size = 16 // num_patch
    assert patches.shape == (2 * num_patch**2, 3, size, size)
    for b in range(2):
        for r in range(num_patch):
            for c in range(num_patch):
                expected = x[b, :, r * size : (r + 1) * size, c * size : (c + 1) * size]
                assert torch.equal(patches[b * num_patch**2 + r * num_patch + c], expected)
    assert torch.equal(unpatchify(patches, num_patch), x)


@pytest.mark.parametrize("num_patch", [2, 3, 4])
def test_neighbour_index_matches_unfold(num_patch):
    positions = num_patch**2
    ids = torch.arange(1, positions + 1, dtype=torch.float).reshape(1, 1, num_patch, num_patch)
    windows = F.unfold(ids, kernel_size=3, padding=1)[0].long().T  # P x 9, 0 = beyond the border
    windows = torch.cat([windows[:, :4], windows[:, 5:]], dim=1)
    expected = torch.where(windows == 0, torch.full_like(windows, positions), windows - 1)
    assert torch.equal(neighbour_index(num_patch), expected)


def test_binary_position_code():
    assert binary_position_code(4).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]
    code = binary_position_code(16)
    assert code.shape == (16, 5)
    assert code[13].tolist() == [0, 1, 1, 0, 1]
    assert len({tuple(row) for row in code.tolist()}) == 16


# ---------------------------------------------------------------- memory addressing and queue


@pytest.mark.parametrize("k", [1, 5, 12])
def test_topk_shrink_rows(k):
    logits = torch.randn(7, 12, requires_grad=True)
    weights = topk_shrink(logits, k)
    assert torch.equal((weights != 0).sum(-1), torch.full((7,), k))
    assert_close(weights.sum(-1), torch.ones(7), rtol=1e-6)
    assert_close(weights, reference_topk(logits.detach(), k), rtol=1e-6)
    # straight-through: the gradient is the softmax's
    upstream = torch.randn(7, 12)
    (grad,) = torch.autograd.grad((weights * upstream).sum(), logits)
    (expected,) = torch.autograd.grad((torch.softmax(logits, -1) * upstream).sum(), logits)
    assert_close(grad, expected, rtol=1e-6)


def test_hard_shrink_is_l1_normalised_threshold():
    logits = torch.tensor([[0.5, 0.1, 0.3, 0.05]])
    weights = hard_shrink(logits, 0.2)
    assert torch.allclose(weights, torch.tensor([[0.625, 0.0, 0.375, 0.0]]), atol=1e-6)


def test_queue_batched_read_matches_per_position_reference():
    torch.manual_seed(0)
    queue = SpaceAwareMemoryQueue(num_positions=4, num_slots=10, slot_dim=6, shrink_thres=3)
    queries = torch.randn(5, 4, 6)
    out = queue(queries)
    for p in range(4):
        memory = queue.memory[p]
        weights = reference_topk(queries[:, p] @ memory.T, 3)
        assert_close(out[:, p], weights @ memory, rtol=1e-6)


def test_queue_read_gradient_reaches_queries_not_queue():
    queue = SpaceAwareMemoryQueue(num_positions=2, num_slots=8, slot_dim=4, shrink_thres=2)
    queries = torch.randn(3, 2, 4, requires_grad=True)
    queue(queries).square().sum().backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0
    assert not queue.memory.requires_grad
    assert [name for name, _ in queue.named_parameters()] == []
    assert {name for name, _ in queue.named_buffers()} == {"memory", "ptr"}


def test_queue_read_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    queue = SpaceAwareMemoryQueue(num_positions=2, num_slots=8, slot_dim=4, shrink_thres=2)
    queries = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = queue(queries.bfloat16())
    assert out.dtype == torch.float32
    assert_close(out, queue(queries.bfloat16().float()), rtol=1e-6)


def test_queue_read_is_contiguous_batch_first():
    """A linear layer on the read folds batch and positions into one product (a permuted view made bf16 copy weights)."""
    queue = SpaceAwareMemoryQueue(num_positions=4, num_slots=8, slot_dim=6, shrink_thres=2)
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = queue(torch.randn(5, 4, 6).to(dtype))
        assert out.shape == (5, 4, 6) and out.is_contiguous()


def test_queue_fifo_write_wraps_around():
    positions, slots, dim = 3, 5, 2
    queue = SpaceAwareMemoryQueue(positions, slots, dim)
    initial = queue.memory.clone()
    expected = [collections.deque([initial[p, s] for s in range(slots)]) for p in range(positions)]
    pointer = 0
    counter = 0.0
    for batch in (2, 3, 4, 1, 7):  # 17 items: wraps three times, the last batch is longer than the queue
        queries = torch.arange(counter, counter + batch * positions * dim).reshape(batch, positions, dim)
        counter += queries.numel()
        queue.write(queries)
        for b in range(batch):
            for p in range(positions):
                expected[p][pointer] = queries[b, p]
            pointer = (pointer + 1) % slots
        assert int(queue.ptr) == pointer
        for p in range(positions):
            assert torch.equal(queue.memory[p], torch.stack(list(expected[p])))


def test_generator_write_memory_writes_forward_queries():
    gen = small_generator().train()
    out = gen(images(3, 64))
    gen.write_memory(out["queries"])
    queue = gen.inpaint.queue
    assert int(queue.ptr) == 3
    assert torch.equal(queue.memory[:, :3], out["queries"].transpose(0, 1))


def test_decoder_memory_matches_per_window_reference():
    torch.manual_seed(0)
    block = DecoderMemory(num_memory=4, num_slots=6, channels=3, spatial_size=(4, 6), shrink_thres=2).eval()
    x = torch.randn(2, 3, 4, 6)
    out = block(x)
    for gi in range(2):
        for gj in range(2):
            window = x[:, :, gi * 2 : (gi + 1) * 2, gj * 3 : (gj + 1) * 3]
            memory = block.memory[gi * 2 + gj].detach()
            weights = reference_topk(window.reshape(2, -1) @ memory.T, 2)
            expected = (weights @ memory).reshape(window.shape)
            assert_close(out[:, :, gi * 2 : (gi + 1) * 2, gj * 3 : (gj + 1) * 3], expected, rtol=1e-6)


# ---------------------------------------------------------------- gradients, state, modes


def test_gradients_reach_every_trainable_parameter():
    gen = small_generator(img_size=64, num_patch=4).train()
    x = images(2, 64)
    out = gen(x)
    distill = sum(F.mse_loss(s, t) for s, t in zip(out["student_features"], out["teacher_features"]))
    loss = F.mse_loss(out["recon"], x) + F.mse_loss(out["teacher_recon"], x) + distill
    names, params = zip(*gen.named_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert [n for n, g in zip(names, grads) if g is None] == []  # every parameter is on the loss's graph
    # and receives a non-zero gradient (an SE layer's hidden ReLU can be dead at initialisation)
    zero = [n for n, g in zip(names, grads) if not g.abs().sum() > 0]
    assert all(".se.fc." in n for n in zero) and len(zero) <= 3
    for part in ("stem", "downs", "inpaint", "decoder.ups", "decoder.memories", "decoder.head", "teacher"):
        assert all(g.abs().sum() > 0 for n, g in zip(names, grads) if n.startswith(part) and ".se.fc." not in n)
    assert all(not b.requires_grad for b in gen.buffers())


def test_distillation_computed_in_the_teacher_pass_equals_the_loss_of_the_feature_lists():
    gen = small_generator(img_size=64, num_patch=2).train()
    x = images(2, 64)
    torch.manual_seed(5)
    out = gen(x)
    pairs = list(zip(out["student_features"], out["teacher_features"]))
    assert len(pairs) == 4
    from_lists = sum(F.mse_loss(s, t) for s, t in pairs)
    assert_close(out["distill"], from_lists, rtol=1e-6)
    params = [p for p in gen.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out["distill"], params, retain_graph=True, allow_unused=True)
    expected = torch.autograd.grad(from_lists, params, allow_unused=True)
    assert sum(g is not None for g in grads) > 50  # student and teacher decoders (and what feeds the student)
    for g, e in zip(grads, expected):
        assert (g is None) == (e is None)
        if g is not None:
            assert_close(g, e, rtol=1e-5)
    # the loss uses it as is; without a teacher there is none
    assert "distill" not in small_generator(dist=False).train()(x)


def test_state_dict_roundtrip_restores_queue_and_pointer():
    gen = small_generator(seed=0).train()
    for seed in (1, 2, 3):
        gen.write_memory(gen(images(3, 64, seed=seed))["queries"])
    state = gen.state_dict()
    assert "inpaint.queue.memory" in state and "inpaint.queue.ptr" in state
    restored = small_generator(seed=42)
    assert not torch.equal(restored.inpaint.queue.memory, gen.inpaint.queue.memory)
    restored.load_state_dict(state)
    assert torch.equal(restored.inpaint.queue.memory, gen.inpaint.queue.memory)
    assert int(restored.inpaint.queue.ptr) == int(gen.inpaint.queue.ptr) == 9
    x = images(2, 64, seed=7)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x)["recon"], gen.eval()(x)["recon"])


def test_eval_output_is_deterministic():
    gen = small_generator().eval()
    x = images(2, 64)
    with torch.no_grad():
        first, second = gen(x)["recon"], gen(x)["recon"]
    assert torch.equal(first, second)


def test_seeded_construction_and_training_forward_are_deterministic():
    a, b = small_generator(seed=3), small_generator(seed=3)
    state_a, state_b = a.state_dict(), b.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    x = images(2, 64)
    torch.manual_seed(11)
    out_a = a.train()(x)["recon"]
    torch.manual_seed(11)
    out_b = b.train()(x)["recon"]
    assert torch.equal(out_a, out_b)


def test_inpaint_masked_shortcut_only_in_training():
    torch.manual_seed(0)
    block = InpaintBlock(32, 8, (2, 2), num_patch=2, num_slots=6, num_heads=2, mask_ratio=0.0)
    x = torch.randn(8, 32, 2, 2)
    block.train()
    out_shortcut, _ = block(x)
    assert torch.equal(out_shortcut, x)  # ratio 0: the encoder feature passes everywhere
    block.mask_ratio = 1.0
    out_inpainted, _ = block(x)
    assert not torch.isclose(out_inpainted, x).any()
    block.mask_ratio = 0.5
    big = torch.randn(256, 32, 2, 2)
    out_mixed, _ = block(big)
    passed = (out_mixed == big).all(dim=1)  # the mask is per pixel, shared by all channels
    assert torch.equal(passed, (out_mixed == big).any(dim=1))
    assert 0.4 < passed.float().mean() < 0.6
    block.eval()
    block.mask_ratio = 0.0
    out_eval_0, _ = block(x)
    block.mask_ratio = 1.0
    out_eval_1, _ = block(x)
    assert torch.equal(out_eval_0, out_eval_1)
    assert not torch.isclose(out_eval_0, x).any()


def test_generator_masks_change_training_output_not_eval():
    gen = small_generator()
    x = images(2, 64)
    outputs = {}
    for mode in ("eval", "train"):  # eval first: training forwards update the BatchNorm statistics
        for ratio in (1.0, 0.95):
            gen.inpaint.mask_ratio = ratio
            torch.manual_seed(5)
            with torch.set_grad_enabled(mode == "train"):
                outputs[(mode, ratio)] = gen.train(mode == "train")(x)["recon"]
    assert not torch.allclose(outputs[("train", 1.0)], outputs[("train", 0.95)])
    assert torch.equal(outputs[("eval", 1.0)], outputs[("eval", 0.95)])


def test_trace_matches_eager_in_eval():
    gen = small_generator(img_size=64, num_patch=4).eval()
    with torch.no_grad():
        traced = torch.jit.trace(gen, images(2, 64, seed=1), strict=False)
        for batch, seed in ((2, 2), (3, 3)):
            x = images(batch, 64, seed=seed)
            assert_close(traced(x)["recon"], gen(x)["recon"], rtol=1e-6)


def _distributed_write(rank: int, world_size: int, init_file: str, result_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # same initial queue on both ranks
    queue = SpaceAwareMemoryQueue(num_positions=2, num_slots=8, slot_dim=3)
    queue.write(torch.full((2 + rank, 2, 3), float(rank + 1)))  # uneven batches: 2 and 3 items
    torch.save({"memory": queue.memory, "ptr": queue.ptr}, os.path.join(result_dir, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_queue_write_is_identical_on_every_rank(tmp_path):
    torch.multiprocessing.spawn(
        _distributed_write, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    states = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    assert torch.equal(states[0]["memory"], states[1]["memory"])
    assert int(states[0]["ptr"]) == int(states[1]["ptr"]) == 5
    assert torch.equal(states[0]["memory"][:, :2], torch.full((2, 2, 3), 1.0))
    assert torch.equal(states[0]["memory"][:, 2:5], torch.full((2, 3, 3), 2.0))


@pytest.mark.parametrize(
    "block, needs_grad",
    [
        ("se", (True,)),
        ("stem", (True,)),  # first convolution recomputed in backward
        ("stem", (False,)),  # as in the generator: the image needs no gradient
        ("up-concat", (True, True)),
        ("up-concat", (True, False)),  # teacher decoder below the bottleneck: detached skip
        ("up-concat", (False, False)),  # teacher's first level: detached input and skip
        ("up-none", (True,)),
        ("up-none", (False,)),
    ],
)
def test_lean_training_path_matches_plain_modules(block, needs_grad, monkeypatch):
    """The memory-lean autograd functions compute what the plain MONAI modules compute, gradients included.

    Input gradients are computed only for the inputs that require them (and equal the plain ones there).
    """
    torch.manual_seed(0)
    if block == "se":
        lean, inputs = SEResBlock(6, 12, stride=2, se_reduction=4), [torch.randn(3, 6, 10, 10)]
    elif block == "stem":
        lean, inputs = SEResBlock(1, 12, se_reduction=4, recompute_first_conv=True), [torch.rand(3, 1, 10, 10)]
    else:
        lean = UpBlock(12, 6, 6, op=block.split("-")[1], se_reduction=4)
        inputs = [torch.randn(3, 12, 5, 5)] + ([torch.randn(3, 6, 10, 10)] if block == "up-concat" else [])
    plain = copy.deepcopy(lean)
    results = []
    for module, use_lean in ((lean, True), (plain, False)):
        monkeypatch.setattr(scripts.blocks, "_lean_training", lambda block, x, use_lean=use_lean: use_lean)
        leaves = [t.clone().requires_grad_(flag) for t, flag in zip(inputs, needs_grad)]
        out = module.train()(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        results.append((out.detach(), [t.grad for t in leaves], [p.grad for p in module.parameters()]))
    (out_a, in_a, par_a), (out_b, in_b, par_b) = results
    assert_close(out_a, out_b, rtol=1e-5, name="output")
    assert [g is not None for g in in_a] == list(needs_grad)
    assert all(g is not None for g in par_a)
    names = [f"input {i} gradient" for i in range(len(in_a))] + [n for n, _ in lean.named_parameters()]
    for name, a, b in zip(names, in_a + par_a, in_b + par_b):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, rtol=1e-5, name=name)
    for (name, a), b in zip(lean.named_buffers(), plain.buffers()):
        assert_close(a, b, rtol=1e-5, name=name)  # running statistics, batch counters


def saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages (parameters excluded) that ``module(x)`` keeps for backward."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(storages.values())


def test_lean_training_keeps_fewer_activations(monkeypatch):
    """The training path keeps about half the activation bytes the plain modules keep for backward."""
    gen = small_generator(img_size=64, num_patch=2).train()
    x = images(2, 64)
    lean = saved_bytes(gen, x)
    monkeypatch.setattr(scripts.blocks, "_lean_training", lambda block, x: False)
    plain = saved_bytes(gen, x)
    assert lean < 0.65 * plain


def test_stem_recomputes_its_first_convolution_instead_of_keeping_it():
    x = torch.rand(4, 1, 16, 16)
    kept = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        kept[recompute] = saved_bytes(SEResBlock(1, 12, se_reduction=4, recompute_first_conv=recompute).train(), x)
    assert kept[False] - kept[True] == 4 * 12 * 16 * 16 * 4  # one 12-channel fp32 activation


FUSED_NODES = {
    "_BatchNormReLUConvBackward",
    "_ConvBatchNormReLUConvBackward",
    "_BatchNormSEAddReLUBackward",
    "_UpsampleConcatConvBackward",
}


def graph_nodes(out: torch.Tensor) -> set[str]:
    """Names of every autograd node behind ``out``."""
    names, seen, stack = set(), set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def block_and_inputs(block: str, device: str) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A small training-mode block of each kind (stem, strided SE block, concat up block) and its inputs."""
    torch.manual_seed(0)
    if block == "stem":
        module, inputs = SEResBlock(1, 12, se_reduction=4, recompute_first_conv=True), [torch.rand(3, 1, 10, 10)]
    elif block == "se":
        module, inputs = SEResBlock(6, 12, stride=2, se_reduction=4), [torch.randn(3, 6, 10, 10)]
    else:
        module, inputs = UpBlock(12, 6, 6, se_reduction=4), [torch.randn(3, 12, 5, 5), torch.randn(3, 6, 10, 10)]
    return module.to(device).train(), [t.to(device).requires_grad_(True) for t in inputs]


@pytest.mark.parametrize("block", ["stem", "se", "up"])
def test_training_path_follows_the_input_device(block):
    """Training takes the fused autograd functions on the CPU only; on any other device the plain modules run."""
    module, inputs = block_and_inputs(block, "cpu")
    on_cpu = graph_nodes(module(*inputs))
    assert on_cpu & FUSED_NODES and "NativeBatchNormBackward0" not in on_cpu
    module, inputs = block_and_inputs(block, "meta")  # a device other than the CPU, without one at hand
    elsewhere = graph_nodes(module(*inputs))
    assert not elsewhere & FUSED_NODES
    assert {"ConvolutionBackward0", "NativeBatchNormBackward0"} <= elsewhere


def test_fused_training_only_with_plain_layers_in_training_with_autograd():
    block, (x,) = block_and_inputs("se", "cpu")
    assert scripts.blocks._lean_training(block, x)
    assert not scripts.blocks._lean_training(block, x.to("meta"))
    with torch.no_grad():
        assert not scripts.blocks._lean_training(block, x)
    assert not scripts.blocks._lean_training(block.eval(), x)
    block.train()
    block.conv_body[1].adn.N = torch.nn.SyncBatchNorm(12)  # one converted layer is enough to step aside
    assert not scripts.blocks._lean_training(block, x)


def test_sync_batchnorm_generator_runs_every_converted_layer(monkeypatch):
    """After ``convert_sync_batchnorm`` each BatchNorm runs through ``SyncBatchNorm.forward`` (which synchronises
    the batch statistics over the ranks; without a process group it normalises locally), giving the plain modules'
    outputs, gradients and running statistics."""
    gen = small_generator(img_size=64, num_patch=2)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(gen))
    converted = [m for m in synced.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(converted) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in gen.modules()) > 30
    called = set()
    sync_forward = torch.nn.SyncBatchNorm.forward

    def recording_forward(self, x):
        called.add(id(self))
        return sync_forward(self, x)

    monkeypatch.setattr(torch.nn.SyncBatchNorm, "forward", recording_forward)
    x = images(2, 64)
    results = []
    for module in (synced, gen):
        if module is gen:  # the reference: the plain modules, forced on the CPU
            monkeypatch.setattr(scripts.blocks, "_lean_training", lambda block, x: False)
        torch.manual_seed(5)
        out = module.train()(x)
        loss = F.mse_loss(out["recon"], x) + F.mse_loss(out["teacher_recon"], x) + out["distill"]
        loss.backward()
        results.append((out["recon"], out["teacher_recon"], [p.grad for p in module.parameters()],
                        [b for b in module.buffers()]))
    assert called == {id(m) for m in converted}
    (recon_s, teacher_s, grads_s, bufs_s), (recon_p, teacher_p, grads_p, bufs_p) = results
    assert_close(recon_s, recon_p, rtol=1e-5, name="recon")
    assert_close(teacher_s, teacher_p, rtol=1e-5, name="teacher_recon")
    names = [n for n, _ in gen.named_parameters()]
    assert all(g is not None for g in grads_s)
    for name, a, b in zip(names, grads_s, grads_p):
        assert_close(a, b, rtol=1e-5, name=name)
    for (name, _), a, b in zip(gen.named_buffers(), bufs_s, bufs_p):
        assert_close(a, b, rtol=1e-5, name=name)


@pytest.mark.parametrize("num_patch", [2, 3])
def test_neighbour_attention_matches_multihead_attention(num_patch):
    """Projecting keys/values once per patch gives nn.MultiheadAttention's result on gathered neighbourhoods."""
    torch.manual_seed(0)
    block = InpaintBlock(16, 4, (2, 2), num_patch=num_patch, num_slots=6, num_heads=4)
    b, p, dim = 3, num_patch**2, 16
    queries = torch.randn(b, p, dim, requires_grad=True)
    mem = torch.randn(b, p, dim, requires_grad=True)
    fast = block.attend_neighbours(queries, mem)
    padded = torch.cat([mem, torch.zeros(b, 1, dim)], dim=1)
    context = padded[:, neighbour_index(num_patch)].reshape(b * p, 8, dim)
    slow = block.attention(queries.reshape(b * p, 1, dim), context, context, need_weights=False)[0].reshape(b, p, dim)
    assert_close(fast, slow, rtol=1e-5)
    grads_fast = torch.autograd.grad(fast.square().sum(), [queries, mem, *block.attention.parameters()])
    grads_slow = torch.autograd.grad(slow.square().sum(), [queries, mem, *block.attention.parameters()])
    for a, c in zip(grads_fast, grads_slow):
        assert_close(a, c, rtol=1e-5)


def test_folded_inference_matches_plain_modules(monkeypatch):
    """Eval mode folds every BatchNorm into its convolution; the result equals the plain MONAI modules."""
    gen = small_generator(img_size=64, num_patch=2)
    gen.train()
    for seed in range(3):  # non-trivial running statistics
        gen(images(2, 64, seed=seed))
    gen.eval()
    x = images(2, 64, seed=9)
    with torch.no_grad():
        folded = gen(x)["recon"]
        monkeypatch.setattr(scripts.blocks, "_folded_inference", lambda m: False)
        plain = gen(x)["recon"]
    assert_close(folded, plain, rtol=1e-5)
    assert not torch.equal(folded, torch.full_like(folded, float(folded.mean())))


def test_bf16_autocast_training_step_is_finite():
    """Under bf16 autocast the lean training path runs, memory reads stay fp32, and the gradients are finite."""
    gen = small_generator(img_size=32, num_patch=2, features_root=4, inpaint_channels=8)
    gen.train()
    x = images(2, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gen(x)
        assert out["recon"].dtype == torch.bfloat16
        loss = F.mse_loss(out["recon"].float(), x) + F.mse_loss(out["teacher_recon"].float(), x)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in gen.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        memory_out = gen.inpaint.queue(out["queries"])
    assert memory_out.dtype == torch.float32


def test_channels_last_layout_gives_the_same_results():
    """The activation layout is an implementation detail: outputs and gradients do not depend on it (fp64)."""
    x = images(2, 64).double()
    results = []
    for channels_last in (True, False):
        gen = small_generator(img_size=64, num_patch=2, channels_last=channels_last).double()
        with torch.no_grad():
            evaluated = gen.eval()(x)["recon"]
        torch.manual_seed(3)
        out = gen.train()(x)
        loss = F.mse_loss(out["recon"], x) + F.mse_loss(out["teacher_recon"], x)
        loss.backward()
        results.append((evaluated, out["recon"].detach(), [p.grad for p in gen.parameters()]))
    (eval_a, train_a, grads_a), (eval_b, train_b, grads_b) = results
    assert_close(eval_a, eval_b, rtol=1e-10)
    assert_close(train_a, train_b, rtol=1e-10)
    for a, b in zip(grads_a, grads_b):
        assert_close(a, b, rtol=1e-10)
