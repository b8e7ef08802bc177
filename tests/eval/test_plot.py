"""The length scatter renders to a PNG without a display."""

from selflengthen_jax.eval.plot import plot_lengths


def test_plot_writes_a_png(tmp_path):
    rows = [
        {"language": "zh", "target": 2000, "band_low": 1600, "band_high": 2400, "length": 2100},
        {"language": "en", "target": 5000, "band_low": 4000, "band_high": 6000, "length": 3500},
        {"language": "en", "target": 7500, "band_low": 7000, "band_high": 8000, "length": 9000},
    ]
    path = plot_lengths(rows, tmp_path / "lengths.png", title="LonGen")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
