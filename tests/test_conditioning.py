"""The condition encoders tau_theta, classifier-free guidance, and a conditional model that
learns its condition."""

import pytest
import torch

from minildm import data
from minildm.app.options import requested_condition
from minildm.autoencoder import build_autoencoder
from minildm.conditioning import AttributeEncoder, ClassEncoder, ConditioningConfig, TextEncoder, WordTokenizer
from minildm.config import MinildmError, get_profile
from minildm.data import toyfaces
from minildm.ldm import LatentDiffusion
from minildm.recipes import autoencoder_config, condition_tensor, conditioning_config, ldm_config
from minildm.sampling import ddim_sample


@pytest.fixture(scope="module")
def faces():
    return data.load_images("toyfaces", 32, 64, seed=11, progress=False)


def test_an_attribute_set_is_a_face_token_plus_one_token_per_present_attribute():
    encoder = AttributeEncoder(4, channels=8)
    attributes = torch.tensor([[False, True, False, True], [False, False, False, False]])
    tokens, mask = encoder(attributes)
    assert tokens.shape == (2, 5, 8)
    assert mask.tolist() == [[True, False, True, False, True], [True, False, False, False, False]]
    assert torch.equal(tokens[0, 2], encoder.embedding.weight[2])  # attribute 1's own token


def test_dropped_rows_become_the_null_sequence_and_the_others_do_not_change():
    encoder = ClassEncoder(3, channels=8)
    labels = torch.tensor([0, 2, 1])
    tokens, mask = encoder(labels, drop=torch.tensor([False, True, False]))
    kept, _ = encoder(labels)
    assert torch.equal(tokens[[0, 2]], kept[[0, 2]])
    assert torch.equal(tokens[1, 0], encoder.null_token[0]) and mask[1].tolist() == [True]
    attributes = AttributeEncoder(3, channels=8)
    tokens, mask = attributes(torch.ones(2, 3, dtype=torch.bool), drop=torch.tensor([True, False]))
    assert mask.tolist() == [[True, False, False, False], [True, True, True, True]]
    assert torch.equal(tokens[0, 0], attributes.null_token[0])


def test_the_tokenizer_round_trips_and_refuses_unknown_words():
    tokenizer = WordTokenizer.from_captions(["a smiling face with blond hair", "a bald face"])
    assert tokenizer.vocabulary == ["a", "bald", "blond", "face", "hair", "smiling", "with"]
    ids = tokenizer.encode(["A smiling face!", ""], length=5)
    assert ids.tolist() == [[1, 2, 7, 5, 0], [1, 0, 0, 0, 0]]
    assert tokenizer.decode(ids[0]) == "a smiling face"
    with pytest.raises(MinildmError, match="unknown word.*'purple'.*knows: a bald"):
        tokenizer.encode(["a purple face"], length=5)
    with pytest.raises(MinildmError, match="at most 4"):
        tokenizer.encode(["a face with blond hair"], length=5)


def test_the_text_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = TextEncoder(vocabulary_size=10, max_length=8, channels=16, layers=2)
    short = torch.tensor([[1, 4, 5, 0]])
    long = torch.tensor([[1, 4, 5, 0, 0, 0, 0, 0]])
    tokens_short, mask_short = encoder(short)
    tokens_long, mask_long = encoder(long)
    assert torch.allclose(tokens_short[:, :3], tokens_long[:, :3], atol=1e-5)
    assert mask_long.sum() == mask_short.sum() == 3
    assert not torch.allclose(encoder(torch.tensor([[1, 5, 4, 0]]))[0][:, 1], tokens_short[:, 1])  # order matters


def test_configurations_come_from_the_data(faces):
    attributes = conditioning_config("attributes", faces)
    assert attributes.attribute_names == list(toyfaces.ATTRIBUTES)
    assert torch.equal(condition_tensor(attributes, faces), faces.attributes)
    subset = conditioning_config("attributes", faces, attributes=["Smiling", "Eyeglasses"])
    assert torch.equal(condition_tensor(subset, faces), faces.attributes[:, [7, 5]])
    classes = conditioning_config("class", faces)
    assert classes.class_names == list(toyfaces.HAIR_OPTIONS)
    assert torch.equal(faces.attributes[torch.arange(64), condition_tensor(classes, faces)], torch.ones(64, dtype=bool))
    text = conditioning_config("text", faces)
    ids = condition_tensor(text, faces)
    assert ids.shape == (64, text.max_length)
    assert WordTokenizer(text.vocabulary).decode(ids[0]) == " ".join(WordTokenizer.words(faces.captions[0]))
    with pytest.raises(MinildmError, match="unknown attribute.*Wings"):
        conditioning_config("attributes", faces, attributes=["Wings"])
    with pytest.raises(MinildmError, match="unknown conditioning"):
        ConditioningConfig("sketch")


def tiny_model(kind: str, names: list[str], prediction: str = "v") -> LatentDiffusion:
    profile = get_profile("tiny")
    autoencoder = build_autoencoder(autoencoder_config(profile, factor=4, reg="kl"))
    named = {"class": "class_names", "attributes": "attribute_names", "text": "vocabulary"}[kind]
    config = ldm_config(profile, autoencoder, prediction=prediction,
                        conditioning=ConditioningConfig(kind, channels=16, **{named: names}))
    return LatentDiffusion(config, autoencoder)


def test_guidance_extrapolates_from_the_null_output_to_the_conditional_one():
    torch.manual_seed(0)
    model = tiny_model("attributes", ["A", "B", "C"])
    for parameter in model.unet.parameters():
        parameter.data.normal_(0, 0.1)
    z_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    attributes = torch.tensor([[True, False, True], [False, False, False]])
    tokens, mask = model.condition_encoder(attributes)
    conditional = model.unet(z_t, t, tokens, mask)
    unconditional = model.unet(z_t, t, *model.condition_encoder.null(2))
    with torch.no_grad():
        assert torch.allclose(model.denoiser(attributes)(z_t, t), conditional, atol=1e-5)
        guided = model.denoiser(attributes, guidance=4.0)(z_t, t)
        assert torch.allclose(guided, unconditional + 4.0 * (conditional - unconditional), atol=1e-4)
        assert torch.allclose(model.denoiser(None, batch_size=2)(z_t, t), unconditional, atol=1e-5)


@pytest.mark.integration
def test_a_class_conditional_model_learns_its_classes():
    """Class 0 is latents of +1 everywhere, class 1 of -1: after training, samples of each
    class land on their own value."""
    torch.manual_seed(0)
    model = tiny_model("class", ["plus", "minus"])
    labels = torch.arange(32) % 2
    latents = (1 - 2 * labels.float()).view(32, 1, 1, 1).expand(32, 4, 8, 8)
    optimizer = torch.optim.Adam(model.networks().parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.loss(latents, condition=labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        denoise = model.denoiser(torch.tensor([0, 0, 1, 1]), guidance=2.0)
        samples = ddim_sample(model.diffusion, denoise, torch.randn(4, 4, 8, 8, generator=generator), steps=20)
    means = samples.mean(dim=(1, 2, 3))
    assert (means[:2] > 0.7).all() and (means[2:] < -0.7).all(), means


def test_a_request_in_words_becomes_the_condition_the_encoder_reads(faces):
    attributes = conditioning_config("attributes", faces, attributes=["Smiling", "Eyeglasses", "Wearing_Hat"])
    assert torch.equal(requested_condition(attributes, "Eyeglasses, Smiling"), torch.tensor([[True, True, False]]))
    classes = conditioning_config("class", faces)
    assert torch.equal(requested_condition(classes, classes.class_names[2]), torch.tensor([2]))
    text = conditioning_config("text", faces)
    assert torch.equal(requested_condition(text, faces.captions[5]), condition_tensor(text, faces)[5:6])
    with pytest.raises(MinildmError, match="unknown class 'purple'; this model knows: "):
        requested_condition(classes, "purple")
    with pytest.raises(MinildmError, match="unknown attribute.*Wings"):
        requested_condition(attributes, "Smiling,Wings")
