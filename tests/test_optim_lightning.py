"""TDLRT in PyTorch Lightning: configure_optimizers returns it with a scheduler; Lightning
trains, checkpoints and resumes it through its own checkpointing, bit for bit."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import tuckerflow.nn as tnn  # noqa: E402
from tuckerflow.optim import TDLRT  # noqa: E402


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            tnn.TuckerLinear(10, 8, rank=2, dtype=torch.float64),
            nn.Tanh(),
            tnn.TuckerLinear(8, 3, rank=2, dtype=torch.float64),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9)
        tdlrt = TDLRT(self, opt, tau=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(tdlrt, T_max=8)
        return {"optimizer": tdlrt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _trainer(path, epochs, **kw):
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=path,
        **kw,
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's hints (workers, log steps)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*LeafSpec.. is deprecated:FutureWarning")
def test_lightning_trains_checkpoints_and_resumes_tdlrt(tmp_path):
    straight = Classifier()
    _trainer(tmp_path, 2).fit(straight, _loader())
    ranks = {n: tuple(m.ranks) for n, m in straight.named_modules() if hasattr(m, "ranks")}
    assert ranks != {"net.0": (2, 2), "net.2": (2, 2)}  # the ranks adapted

    first = Classifier()
    trainer = _trainer(tmp_path, 1)
    trainer.fit(first, _loader())
    assert isinstance(trainer.optimizers[0], TDLRT)
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = Classifier()  # the initial ranks: Lightning's restore resizes the layers
    _trainer(tmp_path, 2).fit(resumed, _loader(), ckpt_path=str(ckpt))
    for (na, a), (nb, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert na == nb and a.shape == b.shape and torch.equal(a, b), na
