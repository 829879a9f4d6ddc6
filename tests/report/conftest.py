"""Result rows of the report tests: three eps of EmbedAttack and PGD plus a fine-tuned depth cell
(``rows``), and one experiment holding two configurations (``two_configs``)."""
from __future__ import annotations

import pytest

from tests.report.fake import cell_row, result_row


@pytest.fixture()
def rows():
    out = []
    for eps, embed, pgd in [(0.0, 0.9, 0.9), (4 / 255, 0.3, 0.1), (8 / 255, 0.1, 0.0)]:
        out.append(result_row("dinov2_vits14", "cifar10", "classification", "embed", eps, 0.9, embed))
        out.append(result_row("dinov2_vits14", "cifar10", "classification", "pgd", eps, 0.9, pgd))
    out.append(result_row("dino_vitb16", "nyuv2", "depth", "depthpgd", 8 / 255, 0.5, 2.6, checkpoint="/ckpt/deacl.pt"))
    return out


@pytest.fixture()
def two_configs():
    """PGD-10 at 224 px and PGD-20 at 518 px in one experiment, each with EmbedAttack and PGD at two eps."""
    return [
        cell_row("embed", 8 / 255, 0.9, 0.30, "a1"), cell_row("pgd", 8 / 255, 0.9, 0.10, "a2"),
        cell_row("embed", 4 / 255, 0.9, 0.50, "a3"), cell_row("pgd", 4 / 255, 0.9, 0.40, "a4"),
        cell_row("embed", 8 / 255, 0.8, 0.20, "b1", steps=20, image_size=518, device="cpu"),
        cell_row("pgd", 8 / 255, 0.8, 0.00, "b2", steps=20, image_size=518),
        cell_row("embed", 4 / 255, 0.8, 0.45, "b3", steps=20, image_size=518),
        cell_row("pgd", 4 / 255, 0.8, 0.05, "b4", steps=20, image_size=518),
    ]
