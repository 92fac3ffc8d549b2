"""DDPO pieces on the tiny LLaVA: token alignment, log-probs, scores, loss, image tokens.

Several tests pin a bug of the script this module replaces (see issue 7): off-by-one gathering,
padding in the middle, BOS inside responses, a projector sized from the wrong width, γ never
applied, image tokens that do not match the features.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from expo_stream.errors import FormatError  # noqa: E402
from expo_stream.multimodal import ddpo  # noqa: E402
from expo_stream.multimodal.data import build  # noqa: E402
from expo_stream.multimodal.model import add_adapters, make_processor, num_image_tokens, start_model  # noqa: E402
from expo_stream.multimodal.tiny import tiny_image_processor, toy_rows  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    net, processor = start_model(tiny=True)
    rows = build(toy_rows(8), processor.tokenizer)[0]["train"]
    return net.eval(), processor, rows


def encoded(tiny, gamma=2.0, n=2, **kw):
    net, processor, rows = tiny
    return [ddpo.encode(rows[i], processor, net.config, gamma=gamma, **kw) for i in range(n)]


def test_response_tokens_and_weights_line_up(tiny):
    net, processor, rows = tiny
    tok = processor.tokenizer
    items = encoded(tiny)
    batch = ddpo.collate(items, tok.pad_token_id)
    ids, w, mask = batch["input_ids"], batch["weights"], batch["attention_mask"]
    assert ids.shape == w.shape == mask.shape and ids.shape[0] == 4
    assert batch["pixel_values"].shape[0] == 4
    for row, (item, side) in enumerate([(it, s) for s in ("chosen", "rejected") for it in items]):
        resp = getattr(item, f"{side}_ids")
        n_prompt, n = len(item.prompt_ids), len(item.prompt_ids) + len(resp)
        # no padding in the middle: the mask is ones, then zeros
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert ids[row, n_prompt:n].tolist() == resp
        assert (w[row, :n_prompt] == 0).all() and (w[row, n:] == 0).all()
        assert (w[row, n_prompt:n] > 0).all()
        # responses carry no BOS and end with EOS
        assert tok.bos_token_id not in resp and resp[-1] == tok.eos_token_id
    # hand-checked: "... The square is <colour> on a plain background." -> γ on the colour only
    c = items[0]
    words = tok.convert_ids_to_tokens(c.chosen_ids)
    heavy = [wd for wd, x in zip(words, c.chosen_weights) if x == 2.0]
    colour = rows[0]["chosen"][slice(*rows[0]["chosen_segments"][0])]
    assert heavy == ["Ġ" + colour] and c.chosen_weights.count(1.0) == len(words) - 1


def test_token_logps_are_next_token_logprobs(tiny):
    net, processor, _ = tiny
    batch = ddpo.collate(encoded(tiny, n=1), processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"]).logits
    lp = ddpo.token_logps(logits, batch["input_ids"])
    ids = batch["input_ids"]
    for row in range(2):
        for t in (1, 20, ids.shape[1] - 1):
            expected = torch.log_softmax(logits[row, t - 1].double(), -1)[ids[row, t]]
            assert lp[row, t].item() == pytest.approx(expected.item(), abs=1e-5)
    assert (lp[:, 0] == 0).all()


def test_sum_score_is_the_sequence_logprob_from_prefixes(tiny):
    """γ = 1 and "sum": the score is Σ log p(y_t | prefix), each term from its own forward pass."""
    net, processor, _ = tiny
    item = encoded(tiny, gamma=1.0, n=1)[0]
    batch = ddpo.collate([item], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        score = ddpo.scores(net, batch, "sum")[0].item()
        total = 0.0
        seq = item.prompt_ids + item.chosen_ids
        for t in range(len(item.prompt_ids), len(seq)):
            prefix = torch.tensor([seq[:t]])
            logits = net(input_ids=prefix, pixel_values=item.pixel_values[None]).logits[0, -1]
            total += torch.log_softmax(logits.double(), -1)[seq[t]].item()
    assert score == pytest.approx(total, abs=1e-4)


def test_padding_does_not_change_a_score(tiny):
    net, processor, _ = tiny
    items = encoded(tiny, n=2, max_response_length=256)
    short = ddpo.collate(items[:1], processor.tokenizer.pad_token_id)
    items[1].chosen_ids = items[1].chosen_ids + items[1].chosen_ids  # force a longer neighbour
    items[1].chosen_weights = items[1].chosen_weights * 2
    both = ddpo.collate(items, processor.tokenizer.pad_token_id)
    assert both["input_ids"].shape[1] > short["input_ids"].shape[1]
    with torch.no_grad():
        alone, together = ddpo.scores(net, short), ddpo.scores(net, both)
    assert together[0].item() == pytest.approx(alone[0].item(), abs=1e-6)
    assert together[2].item() == pytest.approx(alone[1].item(), abs=1e-6)


def test_gamma_weights_the_corrected_tokens():
    lp = torch.tensor([[0.0, 0.0, -1.0, -2.0, -4.0]])
    w = torch.tensor([[0.0, 0.0, 1.0, 2.0, 1.0]])  # two prompt tokens, one corrected token
    assert ddpo.sequence_scores(lp, w, "mean").item() == (-1 - 4 - 4) / 4
    assert ddpo.sequence_scores(lp, w, "sum").item() == -9.0
    assert ddpo.sequence_scores(lp, torch.tensor([[0.0, 0, 1, 1, 1]]), "mean").item() == -7 / 3


def test_loss_is_log2_when_policy_is_reference():
    s = torch.tensor([-3.25, -7.5, -2.0, -9.0], dtype=torch.float64)
    loss, chosen, rejected = ddpo.ddpo_loss(s, s.clone(), beta=0.1)
    assert loss.tolist() == [math.log(2)] * 2
    assert chosen.tolist() == rejected.tolist() == [0.0, 0.0]


def test_gamma1_sum_equals_plain_dpo_computed_independently(tiny):
    """Plain DPO from cross-entropy over masked labels (the usual implementation) == DDPO(γ=1, sum)."""
    import torch.nn.functional as F

    net, processor, _ = tiny
    policy = add_adapters(start_model(tiny=True)[0])
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    policy.eval()
    batch = ddpo.collate(encoded(tiny, gamma=1.0, n=2), processor.tokenizer.pad_token_id)

    def logp(model):
        labels = batch["input_ids"].clone()
        labels[batch["weights"] == 0] = -100
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                             reduction="none")
        return -ce.sum(-1).double()

    with torch.no_grad():
        pi, ref = logp(policy), logp(net)
        beta = 0.1
        plain = -F.logsigmoid(beta * ((pi[:2] - ref[:2]) - (pi[2:] - ref[2:])))
        ours = ddpo.ddpo_loss(ddpo.scores(policy, batch, "sum"), ddpo.scores(net, batch, "sum"),
                              beta)[0]
    assert not torch.allclose(plain, torch.full_like(plain, math.log(2)))
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-6)


def test_projector_is_sized_from_the_vision_width(tiny):
    net, _, _ = tiny
    vision = net.config.vision_config
    assert vision.projection_dim != vision.hidden_size  # CLIP's 512 vs 768 in the seed
    proj = net.model.multi_modal_projector
    assert proj.linear_1.in_features == vision.hidden_size
    assert proj.linear_2.out_features == net.config.text_config.hidden_size


def test_image_token_mismatch_is_a_clear_error(tiny):
    net, processor, rows = tiny
    assert num_image_tokens(net.config) == 16
    wrong = make_processor(processor.tokenizer, tiny_image_processor(), net.config)
    wrong.patch_size = 4  # expands <image> to 64 tokens for 16 features
    with pytest.raises(FormatError, match=r"sample toy-squares/\d+: the prompt has 64 image "
                                          r"tokens but the vision tower gives 16"):
        ddpo.encode(rows[0], wrong, net.config, gamma=2.0)


def test_prompt_truncation_keeps_every_image_token(tiny):
    net, processor, rows = tiny
    sample = dict(rows[0], prompt="What color is the square? " * 40)
    item = ddpo.encode(sample, processor, net.config, gamma=2.0, max_prompt_length=24)
    ids = item.prompt_ids
    assert ids.count(net.config.image_token_id) == 16 and len(ids) - 16 <= 24
