"""The trainer's objectives and building blocks against hand-computed values on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("single_thread_torch")

from curation.train.knn import weighted_knn  # noqa: E402
from curation.train.layers.rope import Rope2D, apply_rope  # noqa: E402
from curation.train.linear import linear_probe  # noqa: E402
from curation.train.loss.centering import Centering, sinkhorn_knopp  # noqa: E402
from curation.train.loss.dino import dino_loss  # noqa: E402
from curation.train.loss.gram import downsample_patches, gram_loss  # noqa: E402
from curation.train.loss.ibot import ibot_loss  # noqa: E402
from curation.train.loss.koleo import koleo_loss  # noqa: E402
from curation.train.masking import masks_for_crops  # noqa: E402
from curation.train.models.vit import VisionTransformer, vit_kwargs  # noqa: E402
from curation.train.optim import param_groups  # noqa: E402
from curation.train.schedules import Schedule  # noqa: E402

LOG_1_PLUS_E = math.log(1 + math.e)


def test_dino_loss_by_hand():
    # student view 0 logits (0.1, 0) / 0.1 -> log-softmax (1 - log(1+e), -log(1+e)); view 1 logits (0, 0) -> -log 2
    student = torch.tensor([[[0.1, 0.0]], [[0.0, 0.0]]])
    teacher = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])
    # pairs (teacher 0, student 1): log 2;  (teacher 1, student 0): log(1+e) - 1; mean of the two
    expected = (math.log(2) + LOG_1_PLUS_E - 1) / 2
    assert dino_loss(student, teacher, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_ibot_loss_by_hand_weighs_images_equally():
    masks = torch.tensor([[True, False], [True, True]])
    student = torch.tensor([[0.1, 0.0], [0.0, 0.0], [0.0, 0.0]])  # image 0's patch, then image 1's two patches
    teacher = torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.9, 0.1]])
    expected = ((LOG_1_PLUS_E - 1) + math.log(2)) / 2  # image 0: one patch; image 1: mean of two log-2 patches
    assert ibot_loss(student, teacher, masks, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_koleo_by_hand_and_guarded_against_duplicates():
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # every nearest neighbour is sqrt(2) away
    assert koleo_loss(points).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-6)
    twice = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert torch.isfinite(koleo_loss(twice))


def test_gram_loss_by_hand_zero_on_identity_and_rotation_invariant():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])  # normalised: both (1, 0), Gram all ones
    assert gram_loss(student, teacher).item() == pytest.approx(0.5)  # off-diagonals differ by 1: 2 of 4 entries
    features = torch.randn(3, 10, 16)
    assert gram_loss(features, features).item() == pytest.approx(0.0, abs=1e-10)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    other = torch.randn(3, 10, 16)
    assert gram_loss(features @ rotation, other).item() == pytest.approx(gram_loss(features, other).item(), rel=1e-5)
    assert gram_loss(features @ rotation, features).item() == pytest.approx(0.0, abs=1e-10)


def test_objectives_stay_float32_under_bf16_autocast():
    """Near its anchor a Gram loss is ~1e-7: bf16 matmuls (autocast recasts `.float()` inputs) would swamp it."""
    generator = torch.Generator().manual_seed(0)
    anchor = torch.randn(4, 16, 32, generator=generator)
    student = anchor + 0.002 * torch.randn(anchor.shape, generator=generator)
    cls = torch.randn(8, 32, generator=generator)
    exact = gram_loss(student, anchor), koleo_loss(cls)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = gram_loss(student, anchor), koleo_loss(cls)
    assert under[0].dtype == torch.float32 and under[0].item() == pytest.approx(exact[0].item(), rel=0.02)
    assert under[1].item() == pytest.approx(exact[1].item(), rel=1e-3)


def test_gram_teacher_grid_is_downsampled_to_the_students():
    patches = torch.randn(2, 64, 8)
    assert downsample_patches(patches, (8, 8), (4, 4)).shape == (2, 16, 8)


def test_sinkhorn_knopp_is_doubly_normalised():
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * 3  # fixed: some draws converge slower
    q = sinkhorn_knopp(logits, temperature=0.5, iterations=3)
    assert torch.allclose(q.sum(dim=1), torch.ones(8), atol=1e-6)  # each sample: a distribution
    q = sinkhorn_knopp(logits, temperature=0.5, iterations=200)
    assert torch.allclose(q.sum(dim=0), torch.full((4,), 8 / 4), atol=1e-3)  # each prototype: an equal share
    assert torch.allclose(q.sum(dim=1), torch.ones(8), atol=1e-6)


def test_ema_centering_by_hand():
    centering = Centering(2, "ema", momentum=0.9)
    logits = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    targets = centering.targets(logits, temperature=1.0)  # centre still 0: plain softmax
    assert torch.allclose(targets[0], torch.softmax(torch.tensor([1.0, 3.0]), 0))
    centering.update(logits)
    assert torch.allclose(centering.center, torch.tensor([[0.2, 0.4]]))  # 0.9 * 0 + 0.1 * mean (2, 4)


def test_schedules():
    cosine = Schedule("cosine", 1.0, 0.0, warmup_steps=10, warmup_from=0.0, total_steps=110)
    assert cosine(0) == 0.0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5) and cosine(110) == pytest.approx(0.0) and cosine(500) == pytest.approx(0)
    constant = Schedule("constant", 0.07, 0.0, warmup_steps=4, warmup_from=0.04, total_steps=100)
    assert constant(2) == pytest.approx(0.055) and constant(4) == constant(99) == constant(10**6) == 0.07


def test_param_groups_skip_decay_on_norms_biases_layerscale_and_tokens():
    from curation.train.config import parse_train_config
    from curation.train.meta_arch import StudentNetwork

    config = parse_train_config({"model": {"preset": "tiny", "depth": 2},
                                 "heads": {"prototypes": 16, "ibot_prototypes": 16, "hidden_dim": 32}})  # fmt: skip
    groups = param_groups(StudentNetwork(config), depth=2, layer_decay=0.5)
    for group in groups:
        for name in group["names"]:
            no_decay = name.endswith(("bias", "_token", "_tokens", ".gamma")) or ".norm" in name
            assert group["wd_scale"] == (0.0 if no_decay else 1.0), name
    scale = {name: group["lr_scale"] for group in groups for name in group["names"]}
    assert scale["backbone.patch_embed.weight"] == 0.125 and scale["backbone.blocks.1.mlp.0.weight"] == 0.5
    assert scale["dino_head.prototypes"] == 1.0


def test_masks_cover_half_the_crops_with_ratios_in_range():
    generator = torch.Generator().manual_seed(0)
    masks = masks_for_crops(8, 8, 8, generator)
    masked = masks.sum(dim=1)
    assert (masked > 0).sum() == 4
    assert all(round(0.1 * 64) <= count <= 0.5 * 64 for count in masked[masked > 0].tolist())


@pytest.mark.parametrize("grid", [4, 14])
def test_block_masks_never_exceed_the_upper_ratio(grid):
    """Overlapping rectangles once reached 0.75 of a 4 x 4 grid for a 0.5 target."""
    generator = torch.Generator().manual_seed(0)
    shares = torch.cat([masks_for_crops(32, grid, grid, generator).float().mean(dim=1) for _ in range(200)])
    assert shares.max() <= 0.5 and (shares > 0).sum() == 200 * 16
    assert shares[shares > 0].mean() == pytest.approx(0.3, abs=0.02)  # the targets, spread over [0.1, 0.5], are met


def test_rope_rotates_patches_only_and_depends_on_relative_position():
    rope = Rope2D(8).eval()
    sin, cos = rope(1, 4, torch.device("cpu"))
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 5, 8)  # same vector at the CLS slot and at 4 positions in a row
    rotated = apply_rope(q, sin, cos, prefix=1)
    assert torch.equal(rotated[:, :, 0], q[:, :, 0])
    assert torch.allclose(rotated.norm(dim=-1), q.norm(dim=-1))
    dots = rotated[0, 0, 1:] @ rotated[0, 0, 1:].t()  # equal steps in x: equal dot products
    assert dots[0, 1].item() == pytest.approx(dots[1, 2].item(), rel=1e-5)
    jittered = Rope2D(8, rescale=2.0).train()
    assert not torch.equal(jittered.coordinates(2, 2, torch.device("cpu")), rope.coordinates(2, 2, torch.device("cpu")))


def test_vit_presets_masks_and_any_resolution():
    model = VisionTransformer(**vit_kwargs("tiny", patch_size=8, depth=2, layerscale=1.0)).eval()
    images = torch.randn(2, 3, 32, 32)
    features = model.forward_features(images)
    assert features["cls"].shape == (2, 192) and features["patches"].shape == (2, 16, 192)
    assert features["registers"].shape == (2, 4, 192) and model(torch.randn(1, 3, 48, 24)).shape == (1, 192)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, :8] = True
    masked = model.forward_features(images, masks)["cls"]
    assert not torch.allclose(masked[0], features["cls"][0]) and torch.allclose(masked[1], features["cls"][1])
    with pytest.raises(ValueError, match="unknown ViT preset"):
        vit_kwargs("huge")


def test_weighted_knn_by_hand():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.9, 0.12]])  # cosines to (1, 0): 1, 0.9939, 0.9912
    labels = np.array([0, 1, 1])
    test = np.array([[1.0, 0.0]])
    # T=0.07: class 0 gets e^(1/0.07) = 1.60e6, class 1 e^(0.9939/0.07) + e^(0.9912/0.07) = 1.47e6 + 1.41e6: class 1
    assert weighted_knn(train, labels, test, np.array([1]), k=3, temperature=0.07) == 1.0
    assert weighted_knn(train, labels, test, np.array([0]), k=1) == 1.0  # only the nearest votes
    # T=0.01: e^100 = 2.69e43 beats e^99.39 + e^99.12 = 2.58e43: the nearest dominates
    assert weighted_knn(train, labels, test, np.array([0]), k=3, temperature=0.01) == 1.0


def test_weighted_knn_with_a_small_temperature_keeps_the_nearest_vote():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.9, 0.12]])  # as above, the nearest now of class 1
    labels = np.array([1, 0, 0])
    # T=0.001: e^1000 overflows; relative to the best, class 1 gets 1 and class 0 e^-6.1 + e^-8.8
    assert weighted_knn(train, labels, np.array([[1.0, 0.0]]), np.array([1]), k=3, temperature=0.001) == 1.0
    for k, temperature in ((0, 0.07), (3, 0.0)):
        with pytest.raises(ValueError, match="k >= 1 and a temperature above 0"):
            weighted_knn(train, labels, np.array([[1.0, 0.0]]), np.array([1]), k=k, temperature=temperature)


def test_linear_probe_fits_linear_classes_and_not_xor():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    labels = np.repeat(np.arange(3), 40)
    blobs = centres[labels] + rng.normal(size=(120, 8))
    assert linear_probe(blobs[::2], labels[::2], blobs[1::2], labels[1::2]) == 1.0
    corners = rng.choice([-1.0, 1.0], size=(400, 2))
    xor = corners + rng.normal(scale=0.1, size=(400, 2))
    labels = (corners[:, 0] * corners[:, 1] > 0).astype(int)  # same-sign corners vs the others: not linear
    assert linear_probe(xor[:200], labels[:200], xor[200:], labels[200:]) < 0.75
    assert weighted_knn(xor[:200], labels[:200], xor[200:], labels[200:]) > 0.95  # the classes are learnable


def test_losses_through_a_compiled_student_match_the_plain_student():
    """`run.compile` hands meta.losses a torch.compile'd student (eager backend here: same wrapper, no C++ build)."""
    from curation.train.config import parse_train_config
    from curation.train.meta_arch import SSLMetaArch

    config = parse_train_config({"model": {"preset": "tiny", "patch_size": 8, "depth": 1, "drop_path": 0.0},
                                 "heads": {"prototypes": 16, "ibot_prototypes": 16, "hidden_dim": 16,
                                           "bottleneck_dim": 8}})  # fmt: skip
    torch.manual_seed(0)
    meta = SSLMetaArch(config).eval()
    views = {"global": torch.randn(4, 3, 16, 16), "local": torch.randn(4, 3, 8, 8)}
    masks = masks_for_crops(4, 2, 2, torch.Generator().manual_seed(0), share=1.0, ratio_min=0.5, ratio_max=0.5)
    plain = meta.losses(views, masks, 0.04, 0.0).loss
    compiled = meta.losses(views, masks, 0.04, 0.0, torch.compile(meta.student, backend="eager")).loss
    assert torch.allclose(plain, compiled)
