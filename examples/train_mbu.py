"""Train a masked-binary U-Net on the built-in nuclei sample with a plain Lightning Trainer."""

import lightning.pytorch as pl

from lightning_mbu import MBUCallback, QuantSpec, SegmentationDataModule, SegmentationModule

quant = QuantSpec("BBBBMMMMBBBB")  # binary everywhere, the four transposed convs masked; t = 0.5
data = SegmentationDataModule(size=128, batch_size=4)  # no data_root: the built-in sample
model = SegmentationModule(quant, base=8, lr=3e-3)
trainer = pl.Trainer(max_epochs=40, accelerator="auto", callbacks=[MBUCallback()]  # schedules the module's own spec)
trainer.fit(model, datamodule=data)
trainer.test(model, datamodule=data, ckpt_path="last")
