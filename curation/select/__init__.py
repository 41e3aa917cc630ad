"""Selection: seed retrieval (DINOv2), hierarchical k-means with resampling and balanced sampling (Vo et al. 2024,
DINOv3). Pure NumPy/FAISS functions; the pipeline stage that wires them into runs is still to come."""
