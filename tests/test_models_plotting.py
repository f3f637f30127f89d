"""plot_mixing_weights writes a real PNG for one model, a dict of models, and ScalarMix modules."""
import struct
import zlib

import pytest
import torch

from bermo.models import BermoForSequenceClassification, BermoModel, plot_mixing_weights
from bermo.nn import ScalarMix
from test_models import tiny_config

pytest.importorskip("matplotlib", reason="plotting needs matplotlib (bermo[plot], in the dev extra)")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data):
    """(type, payload) of every chunk, each chunk's CRC checked: a truncated or corrupt file fails here."""
    assert data[:8] == PNG_SIGNATURE, data[:8]
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert len(payload) == length and zlib.crc32(kind + payload) == crc, f"bad {kind} chunk"
        chunks.append((kind, payload))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def image_size(path):
    width, height = struct.unpack(">II", png_chunks(path.read_bytes())[0][1][:8])
    return width, height


def test_one_model_writes_a_valid_png(tmp_path):
    torch.manual_seed(0)
    model = BermoForSequenceClassification(tiny_config(mix_initial_scalars=[0.5, 0.0, -0.5, 1.0]))
    out = plot_mixing_weights(model, tmp_path / "weights.png")
    assert out == str(tmp_path / "weights.png")
    width, height = image_size(tmp_path / "weights.png")
    assert width > 300 and height > 200
    import matplotlib.image

    pixels = matplotlib.image.imread(out)  # decodes: a real image, not just a header
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.05


def test_a_dict_of_models_and_mixes_of_other_sizes(tmp_path):
    models = {"start": BermoModel(tiny_config()),
              "learned": BermoForSequenceClassification(tiny_config(mix_initial_scalars=[1.0, 0.0, 0.0, -1.0])),
              "allennlp-style mix": ScalarMix(6)}  # other layers: its own panel
    plot_mixing_weights(models, tmp_path / "compare.png", title="three mixes")
    single_panel = image_size(tmp_path / "compare.png")
    plot_mixing_weights({k: v for k, v in models.items() if k != "allennlp-style mix"}, tmp_path / "two.png")
    assert single_panel[1] > image_size(tmp_path / "two.png")[1]  # panels stack when the layers differ


def test_plot_errors_name_the_problem(tmp_path):
    with pytest.raises(TypeError, match="'encoder' is a Linear; expected a BERMo model"):
        plot_mixing_weights({"encoder": torch.nn.Linear(2, 2)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="the dict of models is empty"):
        plot_mixing_weights({}, tmp_path / "x.png")
