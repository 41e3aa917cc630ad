"""The bundled pretrainer: DINOv2/DINOv3-style self-supervised training on a published NAME@vN.

Layout (read in this order): `layers/` building blocks (RoPE, transformer block), `models/` the ViT and the
projection heads, `loss/` one objective per file, `data/` the verified WebDataset stream, batches and
multi-crop views, `meta_arch.py` student + EMA teacher + losses, `train.py` the loop, `checkpoint.py`
state + lineage, `export.py` the embed stage's backbone format, `knn.py` evaluation and collapse monitors.
Torch is imported only here, never by the base install's modules.
"""
