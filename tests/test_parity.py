"""Parity with reference implementations: transformers' CLIP loss (which NegCLIP's loss is without negatives),
PyTorch's multi-head attention, vector-quantize-pytorch's EMA codebook, pytorch-fid's Fréchet distance (SciPy's matrix square root)."""
import math

import pytest
import torch
from torch import nn

from storyteller.models.foundations import CrossModalAttention, contrastive_loss


def tiny_clip(tmp_path):
    "A random-weight CLIPModel built in code, saved, and loaded back through from_pretrained."
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=16, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path)
    return CLIPModel.from_pretrained(tmp_path).eval()


def test_contrastive_loss_matches_clip_model(tmp_path):
    model = tiny_clip(tmp_path)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.05))
    ids = torch.randint(4, 16, (6, 9)); ids[:, 0] = 2; ids[:, -1] = 3
    out = model(input_ids=ids, pixel_values=torch.randn(6, 3, 32, 32), return_loss=True)
    ours = contrastive_loss(out.image_embeds, out.text_embeds, model.logit_scale)
    torch.testing.assert_close(ours, out.loss, rtol=1e-5, atol=1e-6)
    # and the logits it builds are CLIP's logits_per_image
    from storyteller.models.foundations import contrastive_logits
    torch.testing.assert_close(contrastive_logits(out.image_embeds, out.text_embeds, model.logit_scale),
                               out.logits_per_image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("context_dim", [None, 24])
def test_cross_modal_attention_matches_multihead_attention(context_dim):
    torch.manual_seed(1)
    dim, heads = 32, 4
    ours = CrossModalAttention(dim, heads, context_dim=context_dim).eval()
    kdim = context_dim or dim
    ref = nn.MultiheadAttention(dim, heads, batch_first=True, kdim=kdim, vdim=kdim).eval()
    with torch.no_grad():
        if context_dim is None:
            ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        else:
            ref.q_proj_weight.copy_(ours.q_proj.weight)
            ref.k_proj_weight.copy_(ours.k_proj.weight)
            ref.v_proj_weight.copy_(ours.v_proj.weight)
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    q, ctx = torch.randn(4, 7, dim), torch.randn(4, 11, kdim)
    pad = torch.rand(4, 11) < 0.4
    pad[:, 0] = False
    expected = ref(q, ctx, ctx, key_padding_mask=pad)[0]
    torch.testing.assert_close(ours(q, ctx, pad), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(q, ctx, pad, return_weights=True)[0], expected, rtol=1e-5, atol=1e-5)


def test_padding_never_receives_attention():
    torch.manual_seed(2)
    attn = CrossModalAttention(16, 2).eval()
    q, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    pad = torch.tensor([[False, False, True, True, True], [False] * 5])
    _, w = attn(q, ctx, pad, return_weights=True)
    assert w[0, ..., 2:].abs().max() == 0
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 3))


def test_padded_context_does_not_change_the_fused_output():
    "On the default (scaled_dot_product_attention) path, whatever sits at padded positions is ignored."
    torch.manual_seed(3)
    attn = CrossModalAttention(16, 4).eval()
    q, ctx = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    pad = torch.tensor([[False, False, False, True, True, True], [False] * 5 + [True]])
    noisy = ctx.clone()
    noisy[pad] = 1e3 * torch.randn_like(noisy[pad])
    torch.testing.assert_close(attn(q, noisy, pad), attn(q, ctx, pad), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(attn(q, noisy), attn(q, ctx))  # without the mask the noise would matter


@pytest.mark.parametrize("decay", [0.8, 0.99])
def test_ema_codebook_matches_vector_quantize_pytorch(decay):
    "Same codebook, same batch: the same nearest codes and output, and the same EMA statistics and codebook after the update."
    from vector_quantize_pytorch import VectorQuantize

    from storyteller.models.vqvae import VectorQuantizer

    torch.manual_seed(0)
    ours = VectorQuantizer(64, 8, ema=True, decay=decay).train()
    theirs = VectorQuantize(dim=8, codebook_size=64, decay=decay, commitment_weight=0.25,
                            accept_image_fmap=True).train()
    with torch.no_grad():
        theirs._codebook.embed.copy_(ours.codebook[None])
        theirs._codebook.embed_avg.copy_(ours.embed_sum[None])
        theirs._codebook.cluster_size.copy_(ours.cluster_size[None])
    for _ in range(3):  # a few updates, so the statistics diverge from their start
        z = torch.randn(4, 8, 6, 6)
        their_output, their_indices, _ = theirs(z)
        out = ours(z)
        assert torch.equal(out.indices, their_indices)
        torch.testing.assert_close(out.z_q, their_output)  # the codes matched, from before this step's update
        torch.testing.assert_close(ours.cluster_size, theirs._codebook.cluster_size[0])
        torch.testing.assert_close(ours.embed_sum, theirs._codebook.embed_avg[0])
        torch.testing.assert_close(ours.codebook, theirs._codebook.embed[0])


@pytest.mark.parametrize("n, d", [(50, 8), (300, 64), (40, 64)])   # the last: covariances of less than full rank
def test_frechet_distance_matches_pytorch_fid_formula(n, d):
    "StoryWorld FID's distance against pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm of the product)."
    import numpy as np
    import scipy.linalg

    from storyteller.world.judge import frechet_distance

    g = torch.Generator().manual_seed(n + d)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n + 7, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64) + 1
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert math.isclose(frechet_distance(a, b), expected, rel_tol=1e-6, abs_tol=1e-6)


def test_negclip_loss_without_negatives_is_the_clip_models_loss(tmp_path):
    "NegCLIP adds captions to choose from; with none added it must be exactly CLIP's loss, and negatives only add to it."
    from storyteller.models.foundations import negclip_loss

    model = tiny_clip(tmp_path)
    ids = torch.randint(4, 16, (5, 7)); ids[:, 0] = 2; ids[:, -1] = 3
    out = model(input_ids=ids, pixel_values=torch.randn(5, 3, 32, 32), return_loss=True)
    empty = out.text_embeds[:0]
    torch.testing.assert_close(negclip_loss(out.image_embeds, out.text_embeds, empty, model.logit_scale), out.loss,
                               rtol=1e-5, atol=1e-6)
    with_negatives = negclip_loss(out.image_embeds, out.text_embeds, torch.randn(3, out.text_embeds.shape[1]),
                                  model.logit_scale)
    assert with_negatives > out.loss
