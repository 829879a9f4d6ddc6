"""The example figure: each image clean, perturbed and attacked, with what the model made of it."""
from __future__ import annotations

import numpy as np
import torch

from ssl_robust.examples import Example, example_figure, perturbation_scale


def _example(task: str) -> Example:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=gen)
    x_adv = (x + 0.03 * torch.randn(3, 3, 8, 8, generator=gen).sign()).clamp(0, 1)
    if task == "classification":
        clean = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
        adv = torch.tensor([[0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])  # the first image's prediction flips
        return Example.first(x, x_adv, clean, adv, torch.tensor([0, 1, 0]))
    if task == "segmentation":
        clean, adv = torch.randn(3, 5, 8, 8, generator=gen), torch.randn(3, 5, 8, 8, generator=gen)
        return Example.first(x, x_adv, clean, adv, torch.randint(0, 5, (3, 8, 8), generator=gen))
    depth = torch.rand(3, 8, 8, generator=gen) * 4 + 1
    return Example.first(x, x_adv, depth, depth * 1.5, depth)


def _panels(fig, columns: int) -> list[list]:
    axes = fig.axes
    return [axes[r * columns:(r + 1) * columns] for r in range(len(axes) // columns)]


def test_a_classification_row_shows_clean_perturbation_and_attacked_with_predictions() -> None:
    example = _example("classification")
    rows = _panels(example_figure(example, "classification"), 3)
    assert len(rows) == 3
    scale = perturbation_scale(example)
    for r, (clean, delta, attacked) in enumerate(rows):
        np.testing.assert_allclose(clean.images[0].get_array(), example.x[r].permute(1, 2, 0).numpy(), atol=1e-6)
        expected = ((example.x_adv[r] - example.x[r]) * scale + 0.5).permute(1, 2, 0).clamp(0, 1).numpy()
        np.testing.assert_allclose(delta.images[0].get_array(), expected, atol=1e-6)
        np.testing.assert_allclose(attacked.images[0].get_array(), example.x_adv[r].permute(1, 2, 0).numpy(), atol=1e-6)
    assert rows[0][0].get_title() == "label 0 · predicted 0" and rows[0][2].get_title() == "predicted 1"
    assert rows[0][2].title.get_color() == "#C00000" and rows[1][2].title.get_color() == "black"  # only a flip is red
    assert abs(float((example.x_adv - example.x).abs().max()) * scale - 0.5) < 1e-6  # δ fills half the grey range


def test_a_segmentation_row_shows_the_label_map_and_both_predicted_maps() -> None:
    example = _example("segmentation")
    rows = _panels(example_figure(example, "segmentation"), 6)
    titles = [ax.get_title() for ax in rows[0]]
    assert titles == ["clean", "target", "clean prediction", "δ × %.3g + 0.5" % perturbation_scale(example),
                      "attacked", "attacked prediction"]
    np.testing.assert_array_equal(rows[1][2].images[0].get_array(), example.clean_out[1].argmax(0).numpy())
    np.testing.assert_array_equal(rows[1][5].images[0].get_array(), example.adv_out[1].argmax(0).numpy())


def test_depth_maps_share_one_colour_scale_from_the_valid_targets() -> None:
    example = _example("depth")
    rows = _panels(example_figure(example, "depth"), 6)
    limits = {rows[0][k].images[0].get_clim() for k in (1, 2, 5)}
    target = example.target.numpy()
    assert limits == {(float(target.min()), float(target.max()))}
