"""The Transfusion and Chat-UniVi models shipped inside the package load and do what their model cards say."""

import torch

from vistok.data.scenes import Scenes
from vistok.models.transfusion import shipped_transfusion_dir
from vistok.train.transfusion_cli import dominant_colour, load_run


def test_shipped_transfusion_loads_and_its_vae_keeps_the_colours():
    folder = shipped_transfusion_dir()
    assert (folder / "MODEL_CARD.md").is_file()
    model, vae, record = load_run(folder)
    assert record["latent_shape"] == [8, 16, 16] and model.config.latent_channels == 8
    scenes = Scenes(64, 64, "heldout", seed=0, objects=(1, 1))  # one object: its colour is the scene's colour
    items = [scenes[i] for i in range(len(scenes))]
    wanted = [it["objects"][0]["colour"] for it in items]
    pixels = torch.stack([it["pixels"] for it in items])
    with torch.no_grad():
        recon = vae.decode(vae.encode(pixels)).clamp(-1, 1)
    hits = sum(dominant_colour(r) == w for r, w in zip(recon, wanted, strict=True))
    assert hits / len(items) > 0.5  # the card: 0.82 on one-colour captions; a colour guess is right 1 in 7


def test_shipped_univi_loads_and_answers():
    from vistok.data.scenes import Scenes
    from vistok.models.univi import shipped_univi_dir
    from vistok.train.univi import load_univi

    folder = shipped_univi_dir()
    assert (folder / "MODEL_CARD.md").is_file()
    model = load_univi(folder).eval()
    assert model.config.encoder_path is None  # features from the shipped tokenizer
    item = Scenes(128, 1, "heldout", seed=3)[0]
    with torch.no_grad():
        answer, tokens = model.ask(item["pixels"], "how many shapes are there?", reduction="merge")
    assert tokens == 112  # 64 + 32 + 16 merged tokens
    assert answer.strip() in {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}  # it answers counts with a digit
